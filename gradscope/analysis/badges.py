"""The runs table's diagnosis badge for every run at once: the vectorised form of
`diagnosis.badge(diagnosis.diagnose(...))`.

One pass over every run's first- and last-epoch rows (`gradscope.db.frames.run_ends`) with the
thresholds
of `gradscope.analysis.diagnosis`, because calling `diagnose()` once per run costs milliseconds
each, too
slow for tables of thousands of runs. A test checks that both agree. It reads the first and last
epochs only, so a gradient spike in a middle epoch shows in the full diagnosis (Compare,
`gradscope show`), not in the badge. Pandas and numpy only: the CLI and the dashboard share it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gradscope.analysis.diagnosis import (
    BADGE_ORDER,
    CHANCE_ACC,
    CHANCE_MARGIN,
    COLLAPSE_PRED_STD,
    DEAD_FRAC,
    EXPLODE_FACTOR,
    HUGE_GRAD,
    RECOVERED_BADGE,
    SATURATED_FRAC,
    VANISH_FACTOR,
)
from gradscope.vocab.custom import CUSTOM_ARCH

_EDGE = 1e-9  # as diagnosis.at_chance: the chance edge stays inclusive despite rounding


def _any_by_run(flags: pd.Series, run_ids: pd.Series, index: pd.Index) -> pd.Series:
    """Per run in `index`: whether any of its rows is flagged (False for runs without rows)."""
    return flags.groupby(run_ids.to_numpy()).any().reindex(index, fill_value=False).astype(bool)


def _end_ratios(layers: pd.DataFrame, index: pd.Index) -> tuple[pd.Series, pd.Series]:
    """First layer's over the output layer's grad norm per run at its first and at its last
    recorded epoch (NaN where it means nothing; the first epoch's value at both for a one-epoch
    run)."""
    by_epoch = layers.groupby(["run_id", "epoch"])["layer"]
    lo, hi = by_epoch.transform("min"), by_epoch.transform("max")
    several = lo.ne(hi)  # a ratio needs at least two layers
    first = layers[several & layers["layer"].eq(lo)].set_index(["run_id", "epoch"])
    out = layers[several & layers["layer"].eq(hi)].set_index(["run_id", "epoch"])
    f, o = first["grad_norm"], out["grad_norm"].reindex(first.index)
    usable = np.isfinite(f) & np.isfinite(o) & (o > 0) & (f >= 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = (f / o).where(usable)
    frame = ratio.rename("ratio").reset_index()
    e_lo = layers.groupby("run_id")["epoch"].min()
    e_hi = layers.groupby("run_id")["epoch"].max()
    at_first = frame[frame["epoch"].eq(frame["run_id"].map(e_lo))].set_index("run_id")["ratio"]
    at_last = frame[frame["epoch"].eq(frame["run_id"].map(e_hi))].set_index("run_id")["ratio"]
    return at_first.reindex(index), at_last.reindex(index)


def badges(runs: pd.DataFrame, layers: pd.DataFrame, epochs: pd.DataFrame) -> pd.Series:
    """The badge of every run in `runs` (columns id, status), indexed by run id.

    `layers`: run_id, epoch, layer, grad_norm, grad_max_abs, act_std, saturated_frac,
    dead_frac (and finite_max_abs, when recorded) rows of each run's first and last epochs;
    `epochs`: each run's last-epoch row (run_id, train_loss, test_loss, test_acc, pred_std).
    Runs with no rows at all are "empty".
    """
    index = pd.Index(runs["id"], name="run_id")
    flags = pd.DataFrame(False, index=index, columns=list(BADGE_ORDER))

    at_chance = pd.Series(False, index=index)
    collapsed = pd.Series(False, index=index)
    if not epochs.empty:
        e = epochs.set_index("run_id")
        losses_ok = np.isfinite(e["train_loss"]) & np.isfinite(e["test_loss"])
        # A custom run (gradscope.init) logs losses if it likes and has no known chance level:
        # its status says whether it diverged, and it is never "at chance" (as diagnose()).
        custom = set(runs.loc[runs["arch"].eq(CUSTOM_ARCH), "id"]) if "arch" in runs else set()
        is_custom = pd.Series([i in custom for i in e.index], index=e.index, dtype=bool)
        flags["diverged"] = (~(losses_ok | is_custom)).reindex(index, fill_value=False)
        acc = e["test_acc"]
        chance = np.isfinite(acc) & ((acc - CHANCE_ACC).abs() <= CHANCE_MARGIN + _EDGE) & ~is_custom
        at_chance = chance.reindex(index, fill_value=False).astype(bool)
        flat = np.isfinite(e["pred_std"]) & (e["pred_std"] < COLLAPSE_PRED_STD)
        collapsed = flat.reindex(index, fill_value=False).astype(bool)
        flags["collapsed"] = collapsed

    if not layers.empty:
        r_first, r_last = _end_ratios(layers, index)
        limit = 1 / VANISH_FACTOR
        first_low, last_low = r_first.le(limit), r_last.le(limit)  # NaN compares False
        recovered = first_low & r_last.notna() & ~last_low & ~(at_chance | collapsed)
        flags["vanishing"] = (first_low | last_low) & ~recovered
        flags[RECOVERED_BADGE] = recovered
        huge = layers[["grad_norm", "grad_max_abs"]].abs().gt(HUGE_GRAD).any(axis=1)
        if "finite_max_abs" in layers.columns:  # grew past the limit before turning NaN
            huge |= layers["finite_max_abs"].gt(HUGE_GRAD)
        flags["exploding"] = (r_first.gt(EXPLODE_FACTOR) | r_last.gt(EXPLODE_FACTOR)) | _any_by_run(
            huge, layers["run_id"], index
        )
        # Unit health at the last epoch, output layer excluded (as diagnose() does).
        last = layers["epoch"].eq(layers.groupby("run_id")["epoch"].transform("max"))
        hi = layers.groupby(["run_id", "epoch"])["layer"].transform("max")
        hidden = layers[last & layers["layer"].lt(hi)]
        sat = hidden["saturated_frac"] > SATURATED_FRAC  # NaN compares False: never saturated
        flags["saturated"] = _any_by_run(sat, hidden["run_id"], index)
        flags["dead"] = _any_by_run(hidden["dead_frac"] > DEAD_FRAC, hidden["run_id"], index)

    status = runs.set_index("id")["status"].reindex(index)
    flags["diverged"] |= status.eq("diverged")
    # At chance with nothing worse to explain it; the order below lets the worse kinds win.
    flags["not learning"] = at_chance

    # A set, not Index.isin: isin on pandas' Arrow strings loops in Python over its argument.
    recorded = set(layers["run_id"].unique()) | set(epochs["run_id"].unique())
    has_data = pd.Series([run_id in recorded for run_id in index], index=index, dtype=bool)
    badge = pd.Series("healthy", index=index, dtype=object)
    for kind in reversed(BADGE_ORDER):  # the most serious kind is written last and wins
        badge[flags[kind].to_numpy(dtype=bool)] = kind
    badge[~has_data & ~flags["diverged"]] = "empty"
    return badge
