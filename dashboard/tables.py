"""Pure table builders for the pages: the runs table with its diagnosis badges, the config
difference table, and safe display text. No Streamlit, no database.

`badges()` is the runs table's vectorised form of `diagnosis.badge(diagnosis.diagnose(...))`:
one pass over every run's first- and last-epoch rows (`db.frames.run_ends`) with the thresholds
from `dashboard.diagnosis`, because calling `diagnose()` once per run costs milliseconds each,
too slow for tables of thousands of runs. A test checks that both agree. It reads the first and
last epochs only, so a gradient spike in a middle epoch shows on Compare (which diagnoses every
epoch), not in the badge.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd

from dashboard.diagnosis import (
    COLLAPSE_PRED_STD,
    DEAD_FRAC,
    EXPLODE_FACTOR,
    HUGE_GRAD,
    SATURATED_FRAC,
    VANISH_FACTOR,
)

# Most serious first, as `diagnosis.badge` orders findings; colours for the runs table.
BADGE_ORDER = ("diverged", "exploding", "vanishing", "collapsed", "saturated", "dead")
BADGES = (*BADGE_ORDER, "healthy")
BADGE_COLORS = ("red", "red", "red", "red", "orange", "orange", "green")


def _any_by_run(flags: pd.Series, run_ids: pd.Series, index: pd.Index) -> pd.Series:
    """Per run in `index`: whether any of its rows is flagged (False for runs without rows)."""
    return flags.groupby(run_ids.to_numpy()).any().reindex(index, fill_value=False).astype(bool)


def badges(runs: pd.DataFrame, layers: pd.DataFrame, epochs: pd.DataFrame) -> pd.Series:
    """The badge of every run in `runs` (columns id, status), indexed by run id.

    `layers`: run_id, epoch, layer, grad_norm, grad_max_abs, saturated_frac, dead_frac rows of
    some epochs per run (the first and last); `epochs`: each run's last-epoch row (run_id,
    train_loss, test_loss, test_acc, pred_std). Runs with no rows at all are "empty".
    """
    index = pd.Index(runs["id"], name="run_id")
    flags = pd.DataFrame(False, index=index, columns=list(BADGE_ORDER))

    if not layers.empty:
        by_epoch = layers.groupby(["run_id", "epoch"])["layer"]
        lo, hi = by_epoch.transform("min"), by_epoch.transform("max")
        several = lo.ne(hi)  # a ratio needs at least two layers
        first = layers[several & layers["layer"].eq(lo)].set_index(["run_id", "epoch"])
        out = layers[several & layers["layer"].eq(hi)].set_index(["run_id", "epoch"])
        f, o = first["grad_norm"], out["grad_norm"].reindex(first.index)
        usable = np.isfinite(f) & np.isfinite(o) & (o > 0) & (f >= 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (f / o)[usable]
        run_of = ratio.index.get_level_values("run_id").to_series(index=ratio.index)
        flags["vanishing"] = _any_by_run(ratio <= 1 / VANISH_FACTOR, run_of, index)
        huge = layers[["grad_norm", "grad_max_abs"]].abs().gt(HUGE_GRAD).any(axis=1)
        flags["exploding"] = _any_by_run(ratio > EXPLODE_FACTOR, run_of, index) | _any_by_run(
            huge, layers["run_id"], index
        )
        # Unit health at the last epoch, output layer excluded (as diagnose() does).
        last = layers["epoch"].eq(layers.groupby("run_id")["epoch"].transform("max"))
        hidden = layers[last & layers["layer"].lt(hi)]
        sat = hidden["saturated_frac"] > SATURATED_FRAC  # NaN compares False: never saturated
        flags["saturated"] = _any_by_run(sat, hidden["run_id"], index)
        flags["dead"] = _any_by_run(hidden["dead_frac"] > DEAD_FRAC, hidden["run_id"], index)

    if not epochs.empty:
        e = epochs.set_index("run_id")
        losses_ok = np.isfinite(e["train_loss"]) & np.isfinite(e["test_loss"])
        if "arch" in runs.columns:  # a custom run's losses are optional: its status tells
            custom = set(runs.loc[runs["arch"].eq("custom"), "id"])
            losses_ok |= pd.Series([i in custom for i in e.index], index=e.index, dtype=bool)
        flags["diverged"] = (~losses_ok).reindex(index, fill_value=False)
        collapsed = np.isfinite(e["pred_std"]) & (e["pred_std"] < COLLAPSE_PRED_STD)
        flags["collapsed"] = collapsed.reindex(index, fill_value=False)

    status = runs.set_index("id")["status"].reindex(index)
    flags["diverged"] |= status.eq("diverged")

    # A set, not Index.isin: isin on pandas' Arrow strings loops in Python over its argument.
    recorded = set(layers["run_id"].unique()) | set(epochs["run_id"].unique())
    has_data = pd.Series([run_id in recorded for run_id in index], index=index, dtype=bool)
    badge = pd.Series("healthy", index=index, dtype=object)
    for kind in reversed(BADGE_ORDER):  # the most serious kind is written last and wins
        badge[flags[kind]] = kind
    badge[~has_data & ~flags["diverged"]] = "empty"

    return badge


def runs_table(runs: pd.DataFrame, run_badges: pd.Series) -> pd.DataFrame:
    """The Runs page table: one row per run, columns in reading order, indexed by run id.

    The diagnosis is a one-item list (shown as a coloured label); runs without recorded epochs
    (queued, or just started) get an empty one.
    """
    diagnosis = [[] if b == "empty" else [b] for b in run_badges.reindex(runs["id"])]
    total = runs["epochs_total"].where(runs["epochs_total"] > 0, 1)
    table = pd.DataFrame(
        {
            "name": runs["name"].fillna(""),
            "status": runs["status"],
            "progress": (runs["epochs_done"] / total).clip(0, 1).to_numpy(),
            "epochs": [
                f"{d}/{t}" for d, t in zip(runs["epochs_done"], runs["epochs_total"], strict=True)
            ],
            "test acc": runs["final_test_acc"].to_numpy(),
            "diagnosis": diagnosis,
            "arch": runs["arch"],
            "dataset": runs["dataset"],
            "depth": runs["depth"],
            "width": runs["width"],
            "seed": runs["seed"],
            "sweep": runs["sweep_name"].fillna(""),
            "created": runs["created_at"],
            "id": runs["id"].str[:8],
            "error": runs["error"].fillna(""),
        }
    )
    table.index = pd.Index(runs["id"], name="run_id")
    return table


def filter_runs(
    table: pd.DataFrame,
    *,
    text: str = "",
    archs: list[str] | None = None,
    datasets: list[str] | None = None,
    statuses: list[str] | None = None,
    diagnoses: list[str] | None = None,
    sweep: str | None = None,
    depth: tuple[int, int] | None = None,
) -> pd.DataFrame:
    """Rows of `runs_table` matching every given filter; `text` searches name and id."""
    keep = pd.Series(True, index=table.index)
    if text.strip():
        needle = text.strip().lower()
        ids = pd.Series(table.index, index=table.index).str.lower()
        keep &= table["name"].str.lower().str.contains(needle, regex=False) | ids.str.startswith(
            needle
        )
    for column, chosen in (("arch", archs), ("dataset", datasets), ("status", statuses)):
        if chosen:
            keep &= table[column].isin(chosen)
    if diagnoses:
        wanted = set(diagnoses)
        keep &= table["diagnosis"].map(lambda found: bool(wanted.intersection(found)))
    if sweep:
        keep &= table["sweep"].eq(sweep)
    if depth is not None:
        keep &= table["depth"].between(*depth)
    return table[keep]


def _cell(value: object) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


def config_diff(configs: dict[str, dict]) -> tuple[pd.DataFrame, dict[str, str]]:
    """The config fields whose values differ between runs (one row per run, indexed by its
    label; one column per differing field), and the fields every run shares (field -> value),
    both as display text. Runs as rows: many runs read down, not across."""
    fields = list(dict.fromkeys(k for cfg in configs.values() for k in cfg))
    differing: dict[str, list[str]] = {}
    shared: dict[str, str] = {}
    for field in fields:
        values = [_cell(cfg.get(field)) for cfg in configs.values()]
        if len(set(values)) > 1:
            differing[field] = values
        else:
            shared[field] = values[0]
    table = pd.DataFrame(differing, index=pd.Index(list(configs), name="run"))
    return table, shared


# Markdown's specials, Streamlit's directives (`:red[...]`, `:material/...:`, `$math$`) and `&`
# (an entity such as `&lt;` would show as "<").
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()#+\-.!|>~<:$&])")


def escape_markdown(text: str) -> str:
    """User text made inert inside Streamlit Markdown: captions, alerts, and the labels and
    options of widgets that render Markdown (radio, pills, expanders)."""
    return _MARKDOWN_SPECIAL.sub(r"\\\1", text)
