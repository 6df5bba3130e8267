"""Pure table builders for the pages: the runs table with its diagnosis badges, the config
difference table, and safe display text. No Streamlit, no database.

The badges themselves (`badges()`, the vectorised form of `diagnosis.badge(diagnose(...))`) live
in `gradscope.analysis.badges`, next to the rules in `gradscope.analysis.diagnosis`, so the CLI
shows the same labels.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd

# Re-exported: the pages and db_gateway read the badges through this module.
from gradscope.analysis.badges import badges as badges
from gradscope.analysis.diagnosis import BADGE_COLORS as BADGE_COLORS
from gradscope.analysis.diagnosis import BADGES as BADGES
from gradscope.vocab.custom import run_progress
from gradscope.vocab.warning_kinds import NONFINITE

# What a table cell or caption shows for a value not recorded yet (an unfinished run's accuracy):
# st.dataframe's own default is the word "None", and Python's formatting gives "nan".
MISSING = "—"


def number_text(value: object) -> str:
    """A number for a caption: 3 significant digits; None and NaN as MISSING."""
    if value is None or (isinstance(value, float) and value != value):
        return MISSING
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def progress(runs: pd.DataFrame) -> tuple[np.ndarray, list[str]]:
    """Each run's share of its epochs done (NaN where not known: no bar) and the epochs as text,
    as `gradscope.vocab.custom.run_progress` says: a custom run (a user's own loop) has no known
    total until it ends ("3/?"), and a run that did not complete never shows a full bar."""
    # Over Python lists: iterating the (Arrow) text columns themselves costs ~5x more.
    columns = [runs[c].tolist() for c in ("arch", "status", "epochs_done", "epochs_total")]
    found = [run_progress(a, s, int(d), int(t)) for a, s, d, t in zip(*columns, strict=True)]
    share = np.array([np.nan if f is None else f for f, _ in found], dtype=float)
    return share, [text for _, text in found]


def warnings_text(summary: pd.DataFrame | None, run_ids: pd.Series) -> list[str]:
    """Per run: how many live warnings it has and the latest one (step, layer, factor over the
    layer's running level), e.g. "2 · step 57, layer 3, 45x"; "" for none."""
    if summary is None or summary.empty:
        return [""] * len(run_ids)
    texts = {}
    for row in summary.itertuples(index=False):
        what = f"step {row.last_step}, layer {row.last_layer}"
        if row.last_kind == NONFINITE:
            what += ", non-finite"
        elif np.isfinite(row.last_factor):
            what += f", {row.last_factor:.0f}x"
        texts[row.run_id] = f"{row.warnings} · {what}"
    return [texts.get(i, "") for i in run_ids.tolist()]


def runs_table(
    runs: pd.DataFrame, run_badges: pd.Series, warnings: pd.DataFrame | None = None
) -> pd.DataFrame:
    """The Runs page table: one row per run, columns in reading order, indexed by run id.

    The diagnosis is a one-item list (shown as a coloured label); runs without recorded epochs
    (queued, or just started) get an empty one. `warnings`: gradscope.db.warnings.
    warning_summary, shown as each run's count and latest live warning.
    """
    diagnosis = [[] if b == "empty" else [b] for b in run_badges.reindex(runs["id"]).tolist()]
    share, epochs = progress(runs)
    table = pd.DataFrame(
        {
            "name": runs["name"].fillna(""),
            "tags": runs["tags"] if "tags" in runs else [[] for _ in range(len(runs))],
            "status": runs["status"],
            "progress": share,
            "epochs": epochs,
            "test acc": runs["final_test_acc"].to_numpy(),
            "diagnosis": diagnosis,
            "warnings": warnings_text(warnings, runs["id"]),
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
    tags: list[str] | None = None,
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
    if tags:  # every chosen tag, as `gradscope runs --tag` does
        wanted_tags = set(tags)
        keep &= table["tags"].map(lambda have: wanted_tags.issubset(have))
    if sweep:
        keep &= table["sweep"].eq(sweep)
    if depth is not None:
        keep &= table["depth"].between(*depth)
    return table[keep]


# Rows per page of the Runs table: the browser holds one page, however many runs there are
# (a 100,000-row table made the page's first render take seconds; benchmarks/dashboard.py --scale).
PAGE_ROWS = 100
# What the Runs table can be sorted by across pages ("newest first": the listing's own order).
NEWEST_FIRST = "newest first"
SORTS = (
    NEWEST_FIRST,
    "name",
    "status",
    "progress",
    "test acc",
    "arch",
    "dataset",
    "depth",
    "width",
    "seed",
    "sweep",
    "created",
)


def sort_runs(table: pd.DataFrame, by: str, descending: bool = False) -> pd.DataFrame:
    """`table` (rows of `runs_table`) in the chosen order; stable, so ties keep the newest-first
    order, and missing values (an unfinished run's accuracy) go last either way."""
    if by == NEWEST_FIRST or by not in table.columns:
        return table.iloc[::-1] if descending else table
    return table.sort_values(by, ascending=not descending, kind="stable", na_position="last")


def page_count(n_rows: int, size: int = PAGE_ROWS) -> int:
    return max(1, -(-n_rows // size))


def page_of(table: pd.DataFrame, page: int, size: int = PAGE_ROWS) -> pd.DataFrame:
    """Page `page` (1-based, clamped to the pages there are) of `table`."""
    page = max(1, min(page, page_count(len(table), size)))
    return table.iloc[(page - 1) * size : page * size]


def selection_text(table: pd.DataFrame, chosen: list[str], limit: int = 8) -> str:
    """The chosen runs named for people ("relu d6 · 1a2b3c4d, ... and 3 more"), so an action
    says what it will act on even when the ticked rows have scrolled out of view."""
    names = [
        f"{table.at[i, 'name'] or table.at[i, 'arch'] + ' d' + str(table.at[i, 'depth'])} · {i[:8]}"
        for i in chosen[:limit]
    ]
    more = f" and {len(chosen) - limit} more" if len(chosen) > limit else ""
    return ", ".join(names) + more


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


def numbers_only(frame: pd.DataFrame) -> pd.DataFrame:
    """A per-run frame without its run_id and run_label (text) columns."""
    return frame.drop(columns=[c for c in ("run_id", "run_label") if c in frame])


def per_run_numbers(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Each run's rows of a per-run frame (gradscope.db.frames.epochs, layer_stats), by run id,
    without the id and label columns, which diagnose() does not read: its many small filters
    then move numbers only, about twice as fast for 100 runs as the frames groupby hands out
    (the same findings: tests compare them)."""
    numbers = numbers_only(frame)
    rows = frame.groupby(frame["run_id"].to_numpy(), sort=False).indices
    return {run_id: numbers.take(at) for run_id, at in rows.items()}
