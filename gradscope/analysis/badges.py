"""The runs table's diagnosis badge for every run at once: the vectorised form of
`diagnosis.badge(diagnosis.diagnose(...))`, from the same facts.

One pass over every run's first- and last-epoch rows (`gradscope.db.frames.run_ends`), its live
warnings (the largest spike factor) and, for custom runs, the model facts diagnose() reads (the
backward order, the probe's outcome), with the thresholds and the severity order of
`gradscope.analysis.diagnosis`: calling `diagnose()` once per run costs milliseconds each, too
slow for tables of thousands of runs. Tests check that both agree on built-in and custom runs.
A gradient statistic over the limit in a middle epoch (not the first or the last) reaches the
badge through the run's peak gradient (runs.peak_grad, kept as epochs are written), the same
number diagnose() reads from all of the run's layers.
Pandas and numpy only: the CLI and the dashboard share it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from gradscope.analysis.diagnosis import (
    BADGE_ORDER,
    CHANCE_ACC,
    CHANCE_MARGIN,
    COLLAPSE_PRED_STD,
    COLLAPSE_TOP_FRAC,
    DEAD_FRAC,
    EXPLODE_FACTOR,
    GROWTH_EXPLODE,
    HUGE_GRAD,
    R2_LEARNT,
    RECOVERED_BADGE,
    SATURATED_FRAC,
    SPIKE_EXPLODE,
    VANISH_FACTOR,
    dataset_chance,
    time_vanishing,
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


def _grew(layers: pd.DataFrame, index: pd.Index) -> pd.Series:
    """Per run: its median layer's grad norm grew GROWTH_EXPLODE times from the first to the
    last epoch, and its output layer's a tenth of that (diagnosis._own_level_parts)."""
    e_lo = layers.groupby("run_id")["epoch"].transform("min")
    e_hi = layers.groupby("run_id")["epoch"].transform("max")
    first = layers[layers["epoch"].eq(e_lo) & e_lo.ne(e_hi)].set_index(["run_id", "layer"])
    last = layers[layers["epoch"].eq(e_hi) & e_lo.ne(e_hi)].set_index(["run_id", "layer"])
    if first.empty:
        return pd.Series(False, index=index)
    f = first["grad_norm"].reindex(last.index)
    with np.errstate(divide="ignore", invalid="ignore"):
        growth = (last["grad_norm"] / f.where(f > 0)).replace([np.inf, -np.inf], np.nan)
    growth = growth.dropna().reset_index()
    median = growth.groupby("run_id")["grad_norm"].median()
    out_layer = first.reset_index().groupby("run_id")["layer"].max()
    at_out = growth[growth["layer"].eq(growth["run_id"].map(out_layer))]
    out = at_out.set_index("run_id")["grad_norm"].reindex(median.index)
    grew = median.ge(GROWTH_EXPLODE) & out.ge(GROWTH_EXPLODE / 10)
    return grew.reindex(index, fill_value=False).astype(bool)


# The badge tiers in the order diagnose() sorts its findings (severity first, then kind), so the
# worst flagged tier is the worst finding's badge. A nearly constant output is "bad" only when
# it explains a run at chance (or one class for every input); otherwise it is a warning and
# ranks below every bad kind, as in diagnose().
_COLLAPSED_WARN = "collapsed (warn)"
_TIERS = (*BADGE_ORDER[:6], RECOVERED_BADGE, _COLLAPSED_WARN, *BADGE_ORDER[7:])
_LABEL = {_COLLAPSED_WARN: "collapsed"}


def _probe(facts: dict[str, dict], index: pd.Index, key: str) -> pd.Series:
    """A custom run's probe outcome number (accuracy, chance, top_class_frac, r2) per run."""

    def value(run_id: str) -> float:
        probe = (facts.get(run_id) or {}).get("probe") or {}
        v = probe.get(key) if isinstance(probe, dict) else None
        return float(v) if isinstance(v, int | float) else np.nan

    return pd.Series([value(i) for i in index], index=index, dtype=float)


def _in_backward_order(layers: pd.DataFrame, facts: dict[str, dict]) -> pd.DataFrame:
    """Custom runs' layers renumbered in the order the backward pass reached them, as
    diagnosis._in_backward_order does for one run (layers never reached are left out)."""
    if layers.empty or not facts:
        return layers
    mine = layers["run_id"].map(lambda i: i in facts).astype(bool)
    present = layers[mine].groupby("run_id")["layer"].unique()
    rows = []
    for run_id, have in present.items():
        order = facts[run_id].get("backward_order")
        if not isinstance(order, list) or len(order) < 2:
            continue
        order = [int(i) for i in order]
        if order == sorted(order, reverse=True) and set(order) == set(have.tolist()):
            continue  # registration order is depth order already
        rows += [(run_id, layer, len(order) - 1 - i) for i, layer in enumerate(order)]
    if not rows:
        return layers
    places = pd.DataFrame(rows, columns=["run_id", "layer", "_at"])
    moved = layers["run_id"].isin(set(places["run_id"]))
    part = layers[moved].merge(places, on=["run_id", "layer"], how="inner")
    part["layer"] = part.pop("_at").astype(layers["layer"].dtype)
    return pd.concat([layers[~moved], part], ignore_index=True)


def badges(
    runs: pd.DataFrame,
    layers: pd.DataFrame,
    epochs: pd.DataFrame,
    warnings: pd.DataFrame | None = None,
    facts: dict[str, dict] | None = None,
    peaks: pd.Series | None = None,
) -> pd.Series:
    """The badge of every run in `runs` (columns id, status; arch and dataset when known),
    indexed by run id: `diagnosis.badge(diagnose(...))` of each run, from the same facts.

    `layers`: run_id, epoch, layer, grad_norm, grad_max_abs, act_std, saturated_frac,
    dead_frac (and finite_max_abs, when recorded) rows of each run's first and last epochs;
    `epochs`: each run's last-epoch row (run_id, train_loss, test_loss, test_acc, pred_std);
    `warnings`: per run, the largest live spike factor (`spike_max`), the first spike or growth
    warning's step (`first_warned_step`) and the first non-finite one's (`nonfinite_step`)
    (gradscope.db.warnings.warning_summary); `facts`: custom runs' model facts by run id
    (backward order, the probe's accuracy, chance level, top class share, R^2); `peaks`:
    runs.peak_grad by run id (the largest gradient statistic of any epoch, middle ones too:
    gradscope.db.frames.RunEnds.peaks), the number diagnose() reads from all of a run's layers
    (`diagnosis.peak_gradient`). Runs with no rows at all are "empty".
    """
    index = pd.Index(runs["id"], name="run_id")
    facts = facts or {}
    layers = _in_backward_order(layers, facts)
    flags = pd.DataFrame(False, index=index, columns=list(_TIERS))

    stuck = pd.Series(False, index=index)
    custom = set(runs.loc[runs["arch"].eq(CUSTOM_ARCH), "id"]) if "arch" in runs else set()
    if not epochs.empty:
        e = epochs.set_index("run_id")
        losses_ok = np.isfinite(e["train_loss"]) & np.isfinite(e["test_loss"])
        # A custom run (gradscope.init) logs losses if it likes: its status says whether it
        # diverged, and its chance level is its probe labels' majority rate (diagnose()).
        is_custom = pd.Series([i in custom for i in e.index], index=e.index, dtype=bool)
        flags["diverged"] = (~(losses_ok | is_custom)).reindex(index, fill_value=False)
        acc = e["test_acc"]
        # The dataset's own chance level (its majority rate), as diagnosis.at_chance.
        datasets = runs.set_index("id")["dataset"] if "dataset" in runs else None
        level = (
            pd.Series([dataset_chance(datasets.get(i)) for i in e.index], index=e.index)
            if datasets is not None
            else CHANCE_ACC
        )
        built_in_chance = np.isfinite(acc) & ((acc - level) <= CHANCE_MARGIN + _EDGE) & ~is_custom
        p_acc, p_chance = _probe(facts, e.index, "accuracy"), _probe(facts, e.index, "chance")
        top, r2 = _probe(facts, e.index, "top_class_frac"), _probe(facts, e.index, "r2")
        labelled = np.isfinite(p_acc) & np.isfinite(p_chance)
        probe_chance = (labelled & ((p_acc - p_chance) <= CHANCE_MARGIN + _EDGE)) | (
            np.isfinite(r2) & (r2 <= R2_LEARNT)
        )
        chance = built_in_chance | (probe_chance & is_custom)
        flat = np.isfinite(e["pred_std"]) & (e["pred_std"] < COLLAPSE_PRED_STD)
        one_class = is_custom & np.isfinite(top) & (top >= COLLAPSE_TOP_FRAC)
        collapsed_bad = (flat & built_in_chance) | (one_class & ~flat)
        flags["collapsed"] = collapsed_bad.reindex(index, fill_value=False).astype(bool)
        flags[_COLLAPSED_WARN] = (flat & ~collapsed_bad).reindex(index, fill_value=False)
        flags["not learning"] = chance.reindex(index, fill_value=False).astype(bool)
        stuck = (chance | flat | one_class).reindex(index, fill_value=False).astype(bool)

    if not layers.empty:
        r_first, r_last = _end_ratios(layers, index)
        limit = 1 / VANISH_FACTOR
        first_low, last_low = r_first.le(limit), r_last.le(limit)  # NaN compares False
        recovered = first_low & r_last.notna() & ~last_low & ~stuck
        # Vanishing through time (a custom run's probe measured per time step) is "bad"
        # whatever the layers say, as diagnosis._through_time tells it.
        in_time = pd.Series([time_vanishing(facts.get(i)) is not None for i in index], index=index)
        in_time &= _any_by_run(pd.Series(True, index=layers.index), layers["run_id"], index)
        flags["vanishing"] = ((first_low | last_low) & ~recovered) | in_time
        flags[RECOVERED_BADGE] = recovered & ~in_time
        huge = layers[["grad_norm", "grad_max_abs"]].abs().gt(HUGE_GRAD).any(axis=1)
        if "finite_max_abs" in layers.columns:  # grew past the limit before turning NaN
            huge |= layers["finite_max_abs"].gt(HUGE_GRAD)
            if "finite_first_max_abs" in layers.columns:  # ... or far past its first step's
                start = layers["finite_first_max_abs"]
                huge |= (layers["finite_max_abs"] / start.where(start > 0)).ge(GROWTH_EXPLODE)
        flags["exploding"] = (r_first.gt(EXPLODE_FACTOR) | r_last.gt(EXPLODE_FACTOR)) | _any_by_run(
            huge, layers["run_id"], index
        )
        flags["exploding"] |= _grew(layers, index)
        if peaks is not None and not peaks.empty:
            # A value over the limit in any epoch (inf counts; NaN is never kept as a peak).
            huge_peak = peaks.astype(float).gt(HUGE_GRAD).reindex(index, fill_value=False)
            flags["exploding"] |= huge_peak.astype(bool) & _any_by_run(
                pd.Series(True, index=layers.index), layers["run_id"], index
            )
        if warnings is not None and not warnings.empty:
            # A live spike far above the layer's own level (diagnosis._own_level_parts), for
            # runs with recorded layers, as diagnose() reads warnings beside its layers.
            peak = warnings.set_index("run_id")["spike_max"].astype(float)
            spiked = peak.ge(SPIKE_EXPLODE).reindex(index, fill_value=False).astype(bool)
            # ... or a spike/growth warning before the divergence (warned_before_divergence).
            if "first_warned_step" in warnings.columns:
                by_run = warnings.set_index("run_id")
                first = by_run["first_warned_step"].astype(float).reindex(index)
                nan_at = by_run["nonfinite_step"].astype(float).reindex(index)
                run_status = runs.set_index("id")["status"].reindex(index)
                foretold = first.notna() & (
                    (nan_at.notna() & first.lt(nan_at))
                    | (nan_at.isna() & run_status.eq("diverged"))
                )
                spiked |= foretold.astype(bool)
            flags["exploding"] |= spiked & _any_by_run(
                pd.Series(True, index=layers.index), layers["run_id"], index
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
    flags["failed"] = status.isin(("failed", "interrupted")).to_numpy()

    # A set, not Index.isin: isin on pandas' Arrow strings loops in Python over its argument.
    recorded = set(layers["run_id"].unique()) | set(epochs["run_id"].unique())
    has_data = pd.Series([run_id in recorded for run_id in index], index=index, dtype=bool)
    badge = pd.Series("healthy", index=index, dtype=object)
    for tier in reversed(_TIERS):  # the most serious tier is written last and wins
        badge[flags[tier].to_numpy(dtype=bool)] = _LABEL.get(tier, tier)
    badge[~has_data & ~flags["diverged"] & ~flags["failed"]] = "empty"
    return badge
