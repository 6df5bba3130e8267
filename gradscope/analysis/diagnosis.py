"""Plain-language diagnosis of one run: what went wrong with its gradients, and what cures it.

Pure: pandas frames in, frozen `Finding`s out; no torch, no Streamlit, no database, so the CLI
and the dashboard share it. The rules read the whole run, not one epoch:

- gradient ratios (first layer's grad norm over the output layer's) at the first and the last
  epoch: a ratio that recovered by the last epoch of a run that learned is a warning, not a fault;
- unit health (saturated / dead units, activation spread) at the last epoch;
- the moment of divergence (first_nonfinite_step and the finite_* layer statistics, recorded for
  the epoch in which a step's gradient first became non-finite) to name an explosion hidden
  inside an epoch whose statistics are all NaN.

NaN never counts as a dead or saturated unit: it is a symptom of divergence. Every finding
carries the numbers its text cites in `evidence`.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from gradscope.vocab.custom import CUSTOM_ARCH, is_custom
from gradscope.vocab.fields import PEAK_GRAD_FIELDS
from gradscope.vocab.warning_kinds import NONFINITE, SPIKE, TREND_WARNINGS

# --- Thresholds (one place, so the rules, the runs table's badges and the captions agree) -------
VANISH_FACTOR = 1e3  # first layer's grad norm at least this many times below the output's
EXPLODE_FACTOR = 1e3  # first layer's grad norm more than this many times above the output's
HUGE_GRAD = 1e4  # any grad norm or max |g| above this (or inf) counts as exploding
COLLAPSE_PRED_STD = 1e-3  # std of predicted probabilities below this: (nearly) constant output
CHANCE_ACC = 0.5  # binary classification on balanced data
CHANCE_MARGIN = 0.05  # |test_acc - CHANCE_ACC| at most this counts as chance
SATURATED_FRAC = 0.5  # more than this fraction of a layer's sigmoid units saturated
DEAD_FRAC = 0.5  # more than this fraction of a layer's ReLU units dead
CONTRACTION_PER_LAYER = 3.0  # act_std shrinking at least this much per layer is "contraction"
LOW_SATURATION = 0.1  # ... while at most this fraction is saturated: contraction, not saturation
# Below this a layer's act_std is float32 noise, not a spread: a sigmoid unit sits near 0.5,
# where float32's step is 6e-8, so 1e-6 is ~16 steps. The contraction factor is measured only
# over layers above it (a depth-20 sigmoid net's deep layers read ~1e-9, which would understate
# the factor by half).
ACT_STD_FLOOR = 1e-6
_EDGE = 1e-9  # keeps the chance edge inclusive despite rounding (0.55 - 0.5 > 0.05)
# Judged against the run's own baseline (any model, any scale of gradient):
SPIKE_EXPLODE = 100.0  # a live spike this many times the layer's running level is exploding
# Live warnings that foretell an explosion (TREND_WARNINGS): any of them before the first
# non-finite gradient (or in a run that diverged without one) counts as exploding, whatever its
# factor.
GROWTH_EXPLODE = 100.0  # a layer's grad norm (or max |g| before a NaN) this many times its early
COLLAPSE_TOP_FRAC = 0.99  # one predicted class for at least this share of the probe inputs
R2_LEARNT = 0.05  # regression: R^2 on the probe at most this is no better than the mean
# Built-in datasets' majority rate (chance for a classifier that learnt nothing); the synthetic
# ones are balanced by construction; breast_cancer has 357 benign of 569.
DATASET_CHANCE = {"breast_cancer": 357 / 569}

Severity = Literal["bad", "warn", "ok"]

KINDS = (
    "diverged",
    "exploding",
    "vanishing",
    "collapsed",
    "not_learning",
    "saturated",
    "dead",
    "empty",
    "failed",
    "healthy",
)
# Most serious first; `badge` and the order of `diagnose`'s result follow it (severity first).
_KIND_ORDER = ("failed", *KINDS[:-2])
_SEVERITY_ORDER = {"bad": 0, "warn": 1, "ok": 2}

# The runs table's one-word labels, most serious first as `badge` picks them. A vanishing that
# recovered in a run that learned is a warning with a label of its own.
RECOVERED_BADGE = "vanished early"
BADGE_ORDER = (
    "failed",
    "diverged",
    "exploding",
    "vanishing",
    "collapsed",
    "not learning",
    RECOVERED_BADGE,
    "saturated",
    "dead",
)
BADGES = (*BADGE_ORDER, "healthy")
BADGE_COLORS = ("red", "red", "red", "red", "red", "red", "orange", "orange", "orange", "green")

_RELU = "Use ReLU hidden layers (arch relu): their slope is 1 where active, sigmoid's is <= 0.25."
_RESIDUAL = "Add residual connections (arch resnet) so the gradient can skip each layer."
_INIT = "Use Xavier (sigmoid) or He (ReLU) initialisation to keep the signal's spread per layer."
_HE = "Use He initialisation: PyTorch's default is not He init, so deep ReLU nets vanish too."
_ADAM = "Train with Adam, which scales each parameter's step by its own gradient size."
_LOWER_LR = "Lower the learning rate."
_CLIP = "Clip gradients by norm (e.g. max norm 1.0)."
_DIVERGED_CURES = (_LOWER_LR, _CLIP, _ADAM, _INIT)
# A user's own model (arch "custom", recorded with the gradscope API): cures name what to change
# in their code, not a built-in architecture; its task (and so its chance level) is unknown.
_CUSTOM_RELU = "Use ReLU (or GELU) activations: their slope is 1 where active, sigmoid's <= 0.25."
_CUSTOM_SKIP = (
    "Add residual connections or normalisation layers (BatchNorm, LayerNorm) so the gradient "
    "can skip or be rescaled at each layer."
)
_ADD_NORM = (
    "The model has residual connections but no normalisation layer: add BatchNorm or "
    "LayerNorm inside its blocks so the gradient is rescaled at each layer."
)
_ADD_RESIDUAL = (
    "The model has normalisation layers but no residual connection: add skip connections "
    "(x + f(x)) so the gradient can bypass each block."
)


@dataclass(frozen=True)
class Finding:
    """One diagnosis of a run, in plain language, with the usual cures and the numbers cited."""

    kind: str
    severity: Severity
    title: str
    detail: str
    cures: tuple[str, ...] = ()
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "severity": self.severity,
            "title": self.title,
            "detail": self.detail,
            "cures": list(self.cures),
            "evidence": dict(self.evidence),
        }


def _sci(x: float) -> str:
    return f"{x:.1e}"


def _pow10(log10: float) -> str:
    return f"10^{log10:.1f}"


def _log10(ratio: float) -> float:
    return -math.inf if ratio == 0 else math.log10(ratio)


def at_chance(test_acc: float, chance: float = CHANCE_ACC) -> bool:
    """Within CHANCE_MARGIN of the data's chance level (its majority rate), or below it."""
    return math.isfinite(test_acc) and test_acc - chance <= CHANCE_MARGIN + _EDGE


def dataset_chance(dataset: str | None) -> float:
    """A built-in dataset's majority rate (0.5 for the balanced synthetic ones)."""
    return DATASET_CHANCE.get(dataset or "", CHANCE_ACC)


def builtin_facts(config: dict[str, Any]) -> dict[str, Any]:
    """What a built-in run's model contains, from its config, as a custom run's facts say it."""
    arch = str(config.get("arch", ""))
    act = config.get("block_activation", "relu") if arch == "resnet" else arch
    return {
        "optimizer": str(config.get("optimizer", "")),
        "adaptive_optimizer": config.get("optimizer") == "adam",
        "activations": [act] if act else [],
        "residual": arch == "resnet",
        "normalisation": False,
        "init": str(config.get("init", "default")),
    }


def run_facts(config: dict[str, Any] | None) -> dict[str, Any]:
    """The facts diagnose() reads from a run's stored config: a custom run's config.model.facts
    (contents, backward order, the probe's outcome), a built-in run's `builtin_facts`."""
    config = config if isinstance(config, dict) else {}
    if is_custom(config):
        facts = (config.get("model") or {}).get("facts")
        return facts if isinstance(facts, dict) else {}
    return builtin_facts(config)


def fit_cures(cures: tuple[str, ...], facts: dict[str, Any] | None) -> tuple[str, ...]:
    """The cures less what the run already does (optimizer, activation, init, residual and
    normalisation layers); a custom model's skip/normalisation cure names only what it lacks."""
    if not facts:
        return cures
    acts = set(facts.get("activations") or [])
    modern = bool(acts & {"relu", "leaky_relu", "elu", "gelu"}) and not acts & {"sigmoid", "tanh"}
    residual, norm = bool(facts.get("residual")), bool(facts.get("normalisation"))
    init = facts.get("init")
    kept: list[str] = []
    for cure in cures:
        if cure == _ADAM and facts.get("adaptive_optimizer"):
            continue
        if cure in (_RELU, _CUSTOM_RELU) and modern:
            continue
        if cure == _RESIDUAL and residual:
            continue
        if cure == _HE and init == "he":
            continue
        if cure == _GATED and facts.get("gated_recurrent"):
            continue
        if cure == _INIT and init in ("he", "xavier"):
            continue
        if cure == _CUSTOM_SKIP:
            if residual and norm:
                continue
            if residual:
                cure = _ADD_NORM
            elif norm:
                cure = _ADD_RESIDUAL
        kept.append(cure)
    return tuple(kept)


_GATED = (
    "Use gated recurrent layers (LSTM or GRU): their cell state carries the gradient across "
    "time steps."
)
_SHORTER = (
    "Shorten the sequences the gradient must cross (truncated backpropagation, chunks), or "
    "add attention or skip connections over time."
)
_ORTHOGONAL = (
    "Initialise the recurrent weights orthogonally (nn.init.orthogonal_ on weight_hh), so a "
    "step through time keeps the gradient's size at first."
)


def time_vanishing(facts: dict[str, Any] | None) -> float | None:
    """A custom run measured through time (`watch(..., time_dim=...)`, facts "time_gradients"):
    log10 of the gradient reaching the probe's first time step over the one reaching its last,
    at the latest measured epoch, when that is at most -log10(VANISH_FACTOR) (-inf where the
    first step's gradient is exactly 0); else None. diagnose() and the badges both read it."""
    kept = (facts or {}).get("time_gradients")
    if not isinstance(kept, dict):
        return None
    if kept.get("first_zero") is True:
        return -math.inf
    ratio = kept.get("log10_first_over_last")
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not math.isfinite(ratio):
        return None
    return float(ratio) if ratio <= -math.log10(VANISH_FACTOR) else None


def _through_time(van: Finding | None, facts: dict[str, Any]) -> Finding | None:
    """`van` (the layers' vanishing finding, if any) with the vanishing through time told too:
    always "bad", since the recurrent layers cannot learn from early inputs."""
    log10 = time_vanishing(facts)
    if log10 is None:
        return van
    kept = facts["time_gradients"]
    steps, epoch = kept.get("steps"), kept.get("epoch")
    size = "exactly 0 (it underflowed float32)" if log10 == -math.inf else _pow10(log10)
    detail = (
        f"At epoch {epoch} the gradient of the loss reaching the first of the probe's {steps} "
        f"time steps is {size} times the one reaching the last (limit "
        f"{_pow10(-math.log10(VANISH_FACTOR))}): the model cannot learn from early inputs. "
        "Weight gradients cannot show this: a recurrent weight's gradient is a sum over the "
        "time steps, dominated by the late ones."
    )
    evidence = {"time_ratio_log10": log10, "time_steps": steps, "time_epoch": epoch}
    cures = (_GATED, _SHORTER, _ORTHOGONAL)
    if van is None:
        evidence["vanish_factor"] = VANISH_FACTOR
        title = "Vanishing gradients through time"
        return Finding("vanishing", "bad", title, detail, cures, evidence)
    title = van.title if van.severity == "bad" else "Vanishing gradients"
    return Finding(
        "vanishing",
        "bad",
        title,
        f"{van.detail} Through time: {detail[0].lower()}{detail[1:]}",
        tuple(dict.fromkeys((*cures, *van.cures))),
        {**van.evidence, **evidence},
    )


def collapsed_output(pred_std: float) -> bool:
    return math.isfinite(pred_std) and pred_std < COLLAPSE_PRED_STD


def _vanishing_cures(arch: str) -> tuple[str, ...]:
    if arch == "sigmoid":
        return (_RELU, _RESIDUAL, _INIT, _ADAM)
    if arch == "relu":
        return (_HE, _RESIDUAL, _ADAM)
    if arch == CUSTOM_ARCH:
        return (_CUSTOM_SKIP, _INIT, _ADAM)
    return (_INIT, _ADAM, "Use fewer layers.")


def _norms_at(layers: pd.DataFrame, epoch: int) -> pd.Series:
    """grad_norm by layer index (ascending) at one epoch."""
    rows = layers[layers["epoch"] == epoch]
    return rows.set_index("layer")["grad_norm"].astype(float).sort_index()


def _ratio(norms: pd.Series) -> float | None:
    """grad_norm(first layer) / grad_norm(output layer); None where it means nothing."""
    if len(norms) < 2:
        return None
    first, out = float(norms.iloc[0]), float(norms.iloc[-1])
    if not (math.isfinite(first) and math.isfinite(out)) or out <= 0 or first < 0:
        return None
    return first / out


def _log10_text(ratio: float) -> str:
    return "exactly 0 (it underflowed float32)" if ratio == 0 else _pow10(math.log10(ratio))


def _first_fallen(norms: pd.Series) -> int | None:
    """Walking from the output towards the input, the first layer VANISH_FACTOR below it."""
    out = float(norms.iloc[-1])
    for layer, value in norms.iloc[::-1].items():
        if math.isfinite(value) and value <= out / VANISH_FACTOR:
            return int(layer)
    return None


@dataclass(frozen=True)
class Contraction:
    """How fast the activations' spread shrinks per layer, over layers above the noise floor."""

    per_layer: float
    first_layer: int
    first_std: float
    last_layer: int
    last_std: float
    below_floor: int  # layers whose act_std is at or under ACT_STD_FLOOR (not measured)
    saturated_max: float  # the largest saturated fraction of any layer (0 where not applicable)
    saturation_measured: bool = True  # False where no layer has a saturated fraction (not sigmoid)


def contraction(layers_last: pd.DataFrame) -> Contraction | None:
    """The per-layer shrink factor of act_std from the first layer to the last one still above
    ACT_STD_FLOOR (the layers are consecutive from the input); None without two such layers."""
    stds = layers_last.set_index("layer")["act_std"].astype(float).sort_index()
    measurable = stds.map(math.isfinite) & (stds > ACT_STD_FLOOR)
    # Only the unbroken run of measurable layers from the input: past the first layer lost in
    # noise, a later value above the floor is noise too.
    upto = int(np.argmin(measurable.to_numpy())) if not measurable.all() else len(stds)
    kept = stds.iloc[:upto]
    if len(kept) < 2:
        return None
    span = int(kept.index[-1]) - int(kept.index[0])
    per_layer = (float(kept.iloc[0]) / float(kept.iloc[-1])) ** (1 / span)
    sat = layers_last["saturated_frac"].astype(float)
    sat_max = float(sat.max()) if sat.notna().any() else 0.0  # NaN is "not applicable"
    return Contraction(
        per_layer,
        int(kept.index[0]),
        float(kept.iloc[0]),
        int(kept.index[-1]),
        float(kept.iloc[-1]),
        int(len(stds) - upto),
        sat_max,
        bool(sat.notna().any()),
    )


def _saturation_phrase(c: Contraction) -> str:
    """How many units saturate, worded for the number: "at most 0%" reads as a hedge on nothing."""
    if not c.saturation_measured:
        return "while saturation does not apply to its units"
    if c.saturated_max <= 0:
        return "while no unit is saturated"
    if c.saturated_max < 0.005:  # would print as 0%
        return "while under 1% of units are saturated in any layer"
    return f"while at most {c.saturated_max:.0%} of units are saturated in any layer"


def _contraction_text(c: Contraction | None) -> tuple[str, dict[str, Any]]:
    """A sentence (and its evidence) when the spread shrinks strongly while few units saturate;
    saturation is only named as absent, never claimed, since the numbers say it is not there."""
    if c is None or c.per_layer < CONTRACTION_PER_LAYER or c.saturated_max > LOW_SATURATION:
        return "", {}
    below = (
        f"; {c.below_floor} deeper layer(s) have a spread at or below float32 noise "
        f"({_sci(ACT_STD_FLOOR)}) and are left out of the factor"
        if c.below_floor
        else ""
    )
    text = (
        f" The signal contracts rather than saturates: at the last epoch the spread of the "
        f"activations across inputs shrinks about {c.per_layer:.1f}x per layer (act_std "
        f"{_sci(c.first_std)} at layer {c.first_layer}, {_sci(c.last_std)} at layer "
        f"{c.last_layer}{below}) {_saturation_phrase(c)}, so "
        f"deep layers see nearly the same input for every example."
    )
    evidence = {
        "contraction_per_layer": c.per_layer,
        "act_std_floor": ACT_STD_FLOOR,
        "saturated_frac": c.saturated_max,
    }
    return text, evidence


@dataclass(frozen=True)
class _Outcome:
    """The last epoch's metrics that decide whether a run learned."""

    epoch: int
    test_acc: float
    pred_std: float
    chance: float = CHANCE_ACC  # the labels' majority rate
    top_class_frac: float = math.nan  # share of probe inputs given the most common class
    r2: float = math.nan  # regression on a probe with targets

    @property
    def one_class(self) -> bool:
        return math.isfinite(self.top_class_frac) and self.top_class_frac >= COLLAPSE_TOP_FRAC

    @property
    def chance_level(self) -> bool:
        return at_chance(self.test_acc, self.chance) or (
            math.isfinite(self.r2) and self.r2 <= R2_LEARNT
        )

    @property
    def stuck(self) -> bool:
        return self.chance_level or collapsed_output(self.pred_std) or self.one_class


def _vanishing_finding(
    layers: pd.DataFrame,
    arch: str,
    depth: int,
    e_first: int,
    e_last: int,
    outcome: _Outcome | None,
) -> Finding | None:
    r_first = _ratio(_norms_at(layers, e_first))
    r_last = r_first if e_last == e_first else _ratio(_norms_at(layers, e_last))
    limit = 1 / VANISH_FACTOR
    first_low = r_first is not None and r_first <= limit
    last_low = r_last is not None and r_last <= limit
    if not (first_low or last_low):
        return None
    evidence: dict[str, Any] = {"vanish_factor": VANISH_FACTOR}
    if r_first is not None:
        evidence["ratio_log10_first"] = _log10(r_first)
    if r_last is not None:
        evidence["ratio_log10_last"] = _log10(r_last)
    parts = []
    if r_first is not None:
        parts.append(
            f"at epoch {e_first} the first layer's gradient norm is {_log10_text(r_first)} "
            f"times the output layer's"
        )
    if e_last != e_first and r_last is not None:
        parts.append(f"at the last epoch ({e_last}) it is {_log10_text(r_last)} times")
    ratio_text = "; ".join(parts)
    low_epoch = e_first if first_low else e_last
    norms = _norms_at(layers, low_epoch)
    fallen = _first_fallen(norms)
    out_layer = int(norms.index[-1])
    where = (
        f" Walking back from the output (layer {out_layer}), the gradient norm has already "
        f"fallen {VANISH_FACTOR:.0f}x at layer {fallen}, {out_layer - fallen} layer(s) below "
        f"the output, at epoch {low_epoch}."
        if fallen is not None
        else ""
    )
    last = layers[layers["epoch"] == e_last]
    squeeze, squeeze_evidence = _contraction_text(contraction(last))
    evidence.update(squeeze_evidence)
    stuck = outcome is not None and outcome.stuck
    if outcome is not None:
        evidence["test_acc"] = outcome.test_acc
    recovered = first_low and r_last is not None and not last_low
    if recovered and not stuck:
        by = _recovered_by(layers, e_first, e_last)
        evidence["recovered_epoch"] = by
        acc = f" and reaches test accuracy {outcome.test_acc:.3f}" if outcome else ""
        return Finding(
            "vanishing",
            "warn",
            "Vanished at first, recovered",
            f"In this depth-{depth} {arch} net, {ratio_text}.{where} The gradient vanished at "
            f"first and recovered by epoch {by}: the run learned{acc}, so the first layers are "
            f"not starved now, but training started slowly.{squeeze}",
            _vanishing_cures(arch),
            evidence,
        )
    if last_low:
        why = "Layers near the input still barely learn at the last epoch."
    elif outcome is not None and at_chance(outcome.test_acc, outcome.chance):
        why = (
            f"The ratio recovered, but the run is at chance (test accuracy {outcome.test_acc:.3f})."
        )
    elif outcome is not None:
        why = (
            f"The ratio recovered, but the output collapsed (prediction spread "
            f"{_sci(outcome.pred_std)})."
        )
    else:
        why = "Layers near the input barely learn."
    return Finding(
        "vanishing",
        "bad",
        "Vanishing gradients",
        f"In this depth-{depth} {arch} net, {ratio_text}.{where} {why}{squeeze}",
        _vanishing_cures(arch),
        evidence,
    )


def _recovered_by(layers: pd.DataFrame, e_first: int, e_last: int) -> int:
    """The first epoch after e_first whose ratio is no longer vanishing (e_last at the latest)."""
    for epoch in sorted(int(e) for e in layers["epoch"].unique()):
        if epoch <= e_first:
            continue
        r = _ratio(_norms_at(layers, epoch))
        if r is not None and r > 1 / VANISH_FACTOR:
            return epoch
    return e_last


def _exploding_finding(
    epochs: pd.DataFrame,
    layers: pd.DataFrame,
    arch: str,
    depth: int,
    e_first: int,
    e_last: int,
    warnings: pd.DataFrame | None = None,
    status: str = "",
) -> Finding | None:
    parts: list[str] = []
    evidence: dict[str, Any] = {"huge_grad": HUGE_GRAD}
    ratios = {e: _ratio(_norms_at(layers, e)) for e in dict.fromkeys((e_first, e_last))}
    high = {e: r for e, r in ratios.items() if r is not None and r > EXPLODE_FACTOR}
    if high:
        e, r = next(iter(high.items()))
        parts.append(
            f"at epoch {e} the first layer's gradient norm is {_log10_text(r)} times the output "
            f"layer's."
        )
        evidence["ratio_log10_first" if e == e_first else "ratio_log10_last"] = _log10(r)
    grads = layers[["grad_norm", "grad_max_abs"]].astype(float).abs()
    if grads.gt(HUGE_GRAD).to_numpy().any():  # inf > HUGE_GRAD too; NaN compares False
        biggest = float(grads.max().max())
        parts.append(f"Gradient values reach {_sci(biggest)} (limit {_sci(HUGE_GRAD)}).")
        evidence["max_abs_grad"] = biggest
    moment = _divergence_moment(epochs, layers)
    grew = moment is not None and (
        moment["finite_max_abs"] > HUGE_GRAD or moment["growth"] >= GROWTH_EXPLODE
    )
    if moment is not None and grew:
        epoch, step = moment["epoch"], moment["first_nonfinite_step"]
        grew = (
            f"within {step - 1} step(s) of epoch {epoch}"
            if step > 1
            else f"at the first step of epoch {epoch}"
        )
        parts.append(
            f"Max |g| grew from {_sci(moment['finite_first_max_abs'])} to "
            f"{_sci(moment['finite_max_abs'])} {grew}, then became non-finite (NaN or inf) at "
            f"step {step}."
        )
        evidence.update(
            first_nonfinite_epoch=epoch,
            first_nonfinite_step=step,
            max_abs_grad_first_step=moment["finite_first_max_abs"],
            max_abs_grad=max(evidence.get("max_abs_grad", 0.0), moment["finite_max_abs"]),
        )
    peak = peak_gradient(layers)
    if peak > HUGE_GRAD and not parts:  # e.g. the finite steps of a later, diverging epoch
        parts.append(f"Gradient values reach {_sci(peak)} (limit {_sci(HUGE_GRAD)}).")
        evidence["max_abs_grad"] = peak
    parts += _own_level_parts(layers, warnings, e_first, e_last, evidence, status)
    if not parts:
        return None
    return Finding(
        "exploding",
        "bad",
        "Exploding gradients",
        f"In this depth-{depth} {arch} net, " + " ".join(parts),
        (_LOWER_LR, _CLIP, _INIT),
        evidence,
    )


def peak_gradient(layers: pd.DataFrame) -> float:
    """The largest |value| of PEAK_GRAD_FIELDS over all of a run's layers and epochs (inf
    counts, NaN does not; NaN when there is none): the number runs.peak_grad keeps as epochs
    are written, so the runs table's badge judges a spike in any epoch as diagnose() does."""
    columns = [c for c in PEAK_GRAD_FIELDS if c in layers.columns]
    values = np.abs(layers[columns].to_numpy(dtype=float)).ravel()
    values = values[~np.isnan(values)]
    return float(values.max()) if values.size else math.nan


def _own_level_parts(
    layers: pd.DataFrame,
    warnings: pd.DataFrame | None,
    e_first: int,
    e_last: int,
    evidence: dict[str, Any],
    status: str = "",
) -> list[str]:
    """Each layer against its own early level: a live spike (per step, from the block
    reductions) at least SPIKE_EXPLODE times the layer's running level, a spike or growth
    warning that came before the divergence (warned_before_divergence), or a last-epoch grad
    norm at least GROWTH_EXPLODE times the first epoch's."""
    parts: list[str] = []
    if warnings is not None and not warnings.empty:
        steps = warnings["step"].astype(float)
        trend = warnings[warnings["kind"].isin(TREND_WARNINGS)]
        nonfinite = steps[warnings["kind"].eq(NONFINITE)]
        first = float(trend["step"].astype(float).min()) if not trend.empty else math.nan
        nan_at = float(nonfinite.min()) if not nonfinite.empty else math.nan
        if warned_before_divergence(first, nan_at, status):
            w = trend.loc[trend["step"].astype(float).idxmin()]
            until = (
                f", {nan_at - first:.0f} step(s) before its first non-finite gradient (step "
                f"{nan_at:.0f})"
                if math.isfinite(nan_at)
                else ", before the run diverged"
            )
            parts.append(
                f"A live {w['kind']} warning at step {int(w['step'])} (layer {int(w['layer'])}, "
                f"{float(w['factor']):.0f}x){until}."
            )
            evidence.update(
                warned_step=int(w["step"]),
                warned_kind=str(w["kind"]),
                warned_layer=int(w["layer"]),
                **({"nonfinite_step": int(nan_at)} if math.isfinite(nan_at) else {}),
            )
        spikes = warnings[warnings["kind"].eq(SPIKE)]
        spikes = spikes[spikes["factor"].astype(float) >= SPIKE_EXPLODE]
        if not spikes.empty:
            w = spikes.iloc[0]  # the first one: the moment it began
            peak = float(spikes["factor"].astype(float).max())
            parts.append(
                f"At step {int(w['step'])} (epoch {int(w['epoch'])}) layer {int(w['layer'])}'s "
                f"gradient norm jumped to {float(w['factor']):.0f}x its own running level "
                f"({_sci(float(w['baseline']))}); {len(spikes)} such spike(s), up to {peak:.0f}x."
            )
            evidence.update(
                spike_step=int(w["step"]),
                spike_epoch=int(w["epoch"]),
                spike_layer=int(w["layer"]),
                spike_factor=float(w["factor"]),
                spike_factor_max=peak,
            )
    if e_last != e_first:
        first = layers[layers["epoch"] == e_first].set_index("layer")["grad_norm"].astype(float)
        last = layers[layers["epoch"] == e_last].set_index("layer")["grad_norm"].astype(float)
        with np.errstate(divide="ignore", invalid="ignore"):
            growth = (last / first.reindex(last.index)).where(first.reindex(last.index) > 0)
        growth = growth[np.isfinite(growth)]
        # The net as a whole (median layer) and the layer nearest the loss: a first layer that
        # recovers from a vanished start grows alone, and is not an explosion.
        out = first.index.max()
        out_growth = float(growth[out]) if out in growth.index else 0.0
        if (
            not growth.empty
            and float(growth.median()) >= GROWTH_EXPLODE
            and out_growth >= GROWTH_EXPLODE / 10
        ):
            layer = int(growth.idxmax())
            parts.append(
                f"Layer {layer}'s gradient norm grew {float(growth.max()):.0f}x from epoch "
                f"{e_first} to epoch {e_last}."
            )
            evidence.update(growth_layer=layer, growth_factor=float(growth.max()))
    return parts


def warned_before_divergence(first_warned: float, nonfinite: float, status: str) -> bool:
    """Whether a spike or growth warning (first at step `first_warned`, NaN: none) foretold a
    divergence: it came before the first non-finite gradient (step `nonfinite`), or, with no
    non-finite gradient warned, the run's status is "diverged" (a loss that went NaN)."""
    if not math.isfinite(first_warned):
        return False
    if math.isfinite(nonfinite):
        return first_warned < nonfinite
    return status == "diverged"


def _divergence_moment(epochs: pd.DataFrame, layers: pd.DataFrame) -> dict[str, Any] | None:
    """The recorded moment of divergence (None for runs recorded before it was kept)."""
    if "first_nonfinite_step" not in epochs.columns or "finite_max_abs" not in layers.columns:
        return None
    steps = epochs[["epoch", "first_nonfinite_step"]].dropna()
    if steps.empty:
        return None
    row = steps.loc[steps["epoch"].idxmin()]
    epoch = int(row["epoch"])
    at = layers[layers["epoch"] == epoch]
    peak = at["finite_max_abs"].astype(float)
    start = at["finite_first_max_abs"].astype(float)
    if not peak.notna().any():
        return None
    # Each layer against itself: its largest |g| before the NaN over its |g| at the first step.
    with np.errstate(divide="ignore", invalid="ignore"):
        growth = (peak / start).where(start > 0)
    growth = growth[np.isfinite(growth)]
    return {
        "epoch": epoch,
        "first_nonfinite_step": int(row["first_nonfinite_step"]),
        "finite_max_abs": float(peak.max()),
        "finite_first_max_abs": float(start.max()) if start.notna().any() else math.nan,
        "growth": float(growth.max()) if not growth.empty else 0.0,
    }


def _unit_findings(layers_last: pd.DataFrame, e_last: int, arch: str = "") -> list[Finding]:
    # The output layer is left out: a confident classifier's output sigmoid is meant to sit
    # near 0 or 1, which is not a fault.
    hidden = layers_last[layers_last["layer"] < layers_last["layer"].max()]
    checks = (
        (
            "saturated",
            "saturated_frac",
            SATURATED_FRAC,
            "Saturated sigmoid units",
            "saturated (output near 0 or 1, where the sigmoid's slope is almost 0)",
            (_INIT, _LOWER_LR, _CUSTOM_RELU if arch == CUSTOM_ARCH else _RELU),
        ),
        (
            "dead",
            "dead_frac",
            DEAD_FRAC,
            "Dead ReLU units",
            "dead (output 0 for every input, so no gradient flows through them)",
            (_LOWER_LR, _HE, "Use a leaky ReLU or residual connections to keep a gradient path."),
        ),
    )
    findings = []
    for kind, column, limit, title, what, cures in checks:
        fracs = hidden.set_index("layer")[column].astype(float)
        bad = fracs[fracs > limit]  # NaN > limit is False: NaN is never dead or saturated
        if bad.empty:
            continue
        worst = int(bad.idxmax())
        others = [int(i) for i in bad.index if int(i) != worst]
        also = (
            f" Also over {limit:.0%} in layer(s) {', '.join(map(str, others))}." if others else ""
        )
        detail = (
            f"At the last epoch ({e_last}), {bad.max():.0%} of the units in layer {worst} are "
            f"{what}.{also}"
        )
        evidence = {column: float(bad.max()), "layer": worst, "epoch": e_last}
        findings.append(Finding(kind, "warn", title, detail, cures, evidence))
    return findings


def _collapse_finding(
    outcome: _Outcome, arch: str, layers_last: pd.DataFrame, explain_contraction: bool
) -> Finding | None:
    std, acc = outcome.pred_std, outcome.test_acc
    if outcome.one_class and not collapsed_output(std):
        detail = (
            f"At the last epoch ({outcome.epoch}) the model predicts one class for "
            f"{outcome.top_class_frac:.0%} of the probe inputs (limit {COLLAPSE_TOP_FRAC:.0%}), "
            f"although its outputs still vary (spread {_sci(std)})"
            + (f"; accuracy {acc:.3f}, chance {outcome.chance:.3f}." if math.isfinite(acc) else ".")
        )
        evidence = {"top_class_frac": outcome.top_class_frac, "pred_std": std}
        if math.isfinite(acc):
            evidence.update(test_acc=acc, chance_acc=outcome.chance)
        cures = (_LOWER_LR, "Rebalance the classes (weights in the loss, or resampling).", _ADAM)
        return Finding("collapsed", "bad", "One class for every input", detail, cures, evidence)
    if not collapsed_output(std):
        return None
    if arch == CUSTOM_ARCH:  # no known chance level; pred_std is from the user's probe batch
        detail = (
            f"At the last epoch ({outcome.epoch}) the model's output varies by only {_sci(std)} "
            f"over the probe batch (limit {_sci(COLLAPSE_PRED_STD)}): nearly the same output "
            "for every input."
        )
        cures = (*_vanishing_cures(arch), _LOWER_LR)
        evidence = {"pred_std": std}
        return Finding("collapsed", "warn", "Nearly constant output", detail, cures, evidence)
    spread = (
        f"At the last epoch ({outcome.epoch}) the predicted probability varies by only "
        f"{_sci(std)} (std over the test set, limit {_sci(COLLAPSE_PRED_STD)})"
    )
    cures = (*_vanishing_cures(arch), _LOWER_LR)
    squeeze, squeeze_evidence = (
        _contraction_text(contraction(layers_last)) if explain_contraction else ("", {})
    )
    evidence = {"pred_std": std, "test_acc": acc, **squeeze_evidence}
    if at_chance(acc, outcome.chance):
        detail = (
            f"{spread} and test accuracy is {acc:.3f}, at chance: the model gives the same "
            f"output for every input.{squeeze}"
        )
        return Finding("collapsed", "bad", "Collapsed output", detail, cures, evidence)
    detail = f"{spread}, although test accuracy is {acc:.3f}: the outputs are nearly constant."
    return Finding("collapsed", "warn", "Nearly constant output", detail + squeeze, cures, evidence)


def _not_learning_finding(outcome: _Outcome) -> Finding:
    cures = ("Train for more epochs.", _ADAM, "Try a larger learning rate.", _INIT)
    if not at_chance(outcome.test_acc, outcome.chance):  # regression: no better than the mean
        return Finding(
            "not_learning",
            "bad",
            "Not learning",
            f"At the last epoch ({outcome.epoch}) R^2 on the probe is {outcome.r2:.3f} (at most "
            f"{R2_LEARNT}): the model predicts no better than the targets' mean.",
            cures,
            {"r2": outcome.r2, "pred_std": outcome.pred_std},
        )
    balanced = (
        " on balanced data" if outcome.chance == CHANCE_ACC else ", the labels' majority rate"
    )
    return Finding(
        "not_learning",
        "bad",
        "Not learning",
        f"At the last epoch ({outcome.epoch}) test accuracy is {outcome.test_acc:.3f}, within "
        f"{CHANCE_MARGIN:.2f} of chance ({outcome.chance:.3f}{balanced}) or below it, although "
        f"the predictions still vary (std {_sci(outcome.pred_std)}) and the gradients look "
        f"normal: the run has not learned the task yet.",
        cures,
        {"test_acc": outcome.test_acc, "pred_std": outcome.pred_std, "chance_acc": outcome.chance},
    )


def _divergence_finding(epochs: pd.DataFrame, status: str, arch: str = "") -> Finding | None:
    if arch == CUSTOM_ARCH:
        # A custom run's losses are optional (one never logged reads back as NaN): the API sets
        # the status when a logged loss or a statistic becomes non-finite.
        if status != "diverged":
            return None
        detail = (
            "A logged loss or a gradient statistic became non-finite (NaN or inf); the run is "
            "marked diverged (the training loop was not stopped)."
        )
        evidence: dict[str, Any] = {}
        if "first_nonfinite_step" in epochs.columns:  # the moment, as built-in runs record it
            steps = epochs[["epoch", "first_nonfinite_step"]].dropna()
            if not steps.empty:
                row = steps.loc[steps["epoch"].idxmin()]
                epoch, step = int(row["epoch"]), int(row["first_nonfinite_step"])
                detail += f" A gradient first became non-finite at step {step} of epoch {epoch}."
                evidence.update(first_nonfinite_epoch=epoch, first_nonfinite_step=step)
        return Finding("diverged", "bad", "Training diverged", detail, _DIVERGED_CURES, evidence)
    if epochs.empty:
        bad_rows = pd.Series(dtype=int)
    else:
        losses = epochs[["train_loss", "test_loss"]].astype(float)
        bad_rows = epochs.loc[~losses.map(math.isfinite).all(axis=1), "epoch"]
    if status != "diverged" and bad_rows.empty:
        return None
    parts, evidence = [], {}
    if status == "diverged":
        parts.append("The run was stopped as diverged.")
    if not bad_rows.empty:
        epoch = int(bad_rows.min())
        parts.append(f"The loss first became non-finite (NaN or inf) at epoch {epoch}.")
        evidence["first_nonfinite_epoch"] = epoch
    if "first_nonfinite_step" in epochs.columns:
        steps = epochs[["epoch", "first_nonfinite_step"]].dropna()
        if not steps.empty:
            row = steps.loc[steps["epoch"].idxmin()]
            epoch, step = int(row["epoch"]), int(row["first_nonfinite_step"])
            parts.append(f"A gradient first became non-finite at step {step} of epoch {epoch}.")
            evidence.update(first_nonfinite_epoch=epoch, first_nonfinite_step=step)
    return Finding(
        "diverged", "bad", "Training diverged", " ".join(parts), _DIVERGED_CURES, evidence
    )


def _sort_key(f: Finding) -> tuple[int, int]:
    rank = _KIND_ORDER.index(f.kind) if f.kind in _KIND_ORDER else len(_KIND_ORDER)
    return (_SEVERITY_ORDER[f.severity], rank)


def diagnose(
    epochs: pd.DataFrame,
    layers: pd.DataFrame,
    *,
    arch: str,
    status: str,
    depth: int,
    dataset: str | None = None,
    facts: dict[str, Any] | None = None,
    warnings: pd.DataFrame | None = None,
    error: str | None = None,
) -> list[Finding]:
    """Findings for one run, most serious first; a single "healthy" one if nothing is wrong.

    `epochs`: epoch, train_loss, test_loss, test_acc, pred_std (and first_nonfinite_step when
    recorded); `layers`: epoch, layer, grad_norm, grad_max_abs, act_std, saturated_frac,
    dead_frac (and the finite_* columns when recorded), any number of epochs. Optional:
    `dataset` (a built-in run's: its chance level), `facts` (what the model contains, its
    backward order, the probe's outcome: a custom run's config.model.facts, or
    `builtin_facts(config)`), `warnings` (the run's live warnings: kind, epoch, step, layer,
    baseline, factor), `error` (a failed run's).
    """
    for frame in (epochs, layers):
        if "run_id" in frame.columns and frame["run_id"].nunique() > 1:
            raise ValueError("diagnose() takes the frames of exactly one run")
    facts = facts or {}
    failed = _failed_finding(status, error)
    if epochs.empty and layers.empty:
        if status == "diverged":
            detail = "The run was stopped as diverged before any epoch was recorded."
            return [Finding("diverged", "bad", "Training diverged", detail, _DIVERGED_CURES)]
        if failed is not None:
            return [failed]
        return [Finding("empty", "warn", "No data yet", "No epochs have been recorded yet.")]
    layers, order_note = _in_backward_order(layers, facts.get("backward_order"))

    outcome = None
    if not epochs.empty:
        outcome = _outcome(epochs, arch, dataset, facts)
    findings: list[Finding] = [failed] if failed is not None else []
    if (div := _divergence_finding(epochs, status, arch)) is not None:
        findings.append(div)
    layers_last = layers.iloc[:0]
    van = None
    if not layers.empty:
        e_first, e_last = int(layers["epoch"].min()), int(layers["epoch"].max())
        layers_last = layers[layers["epoch"] == e_last]
        boom = _exploding_finding(epochs, layers, arch, depth, e_first, e_last, warnings, status)
        van = _vanishing_finding(layers, arch, depth, e_first, e_last, outcome)
        # An explosion near the output makes the ratio small: with one, a vanishing is told
        # only when it was there at the first epoch already.
        low_first = van is not None and van.evidence.get("ratio_log10_first", 0.0) <= -math.log10(
            VANISH_FACTOR
        )
        if boom is not None and not low_first:
            van = None
        if van is not None and order_note:
            van = dataclasses.replace(van, detail=van.detail + order_note)
        van = _through_time(van, facts)  # what the weights cannot show (a recurrent model)
        findings += [van] if van is not None else []
        findings += [boom] if boom is not None else []
        findings += _unit_findings(layers_last, e_last, arch)
    if outcome is not None:
        # The contraction is told once: with the vanishing finding when there is one.
        told = van is not None and "contraction_per_layer" in van.evidence
        if (col := _collapse_finding(outcome, arch, layers_last, not told)) is not None:
            findings.append(col)
        # A custom run at chance (judged from its probe's labels) is named "not learning" even
        # beside a worse finding that explains it: its reader has no other accuracy line. A
        # built-in run's explained chance level is told inside the worse finding.
        explained = any(f.severity == "bad" for f in findings)
        if outcome.chance_level and (arch == CUSTOM_ARCH or not explained):
            findings.append(_not_learning_finding(outcome))

    if not findings:
        findings.append(_healthy(epochs, layers, outcome, arch))
    fitted = [dataclasses.replace(f, cures=fit_cures(f.cures, facts)) for f in findings]
    return sorted(fitted, key=_sort_key)


def _failed_finding(status: str, error: str | None) -> Finding | None:
    """A failed or interrupted run is never healthy, whatever it recorded before it stopped."""
    if status not in ("failed", "interrupted"):
        return None
    why = f": {error}" if error else ""
    if status == "interrupted":
        detail = f"The run was interrupted before it finished{why}."
        return Finding("failed", "bad", "Interrupted", detail)
    detail = f"The run failed before it finished{why}. What it recorded is judged below."
    return Finding("failed", "bad", "Run failed", detail, (), {"error": error or ""})


def _in_backward_order(layers: pd.DataFrame, order: Any) -> tuple[pd.DataFrame, str]:
    """The layers renumbered from the input side in the order the backward pass reached them
    (`order`: layer indices nearest the loss first), when the model's registration order
    differs; layers the backward pass never reached are left out. Else as recorded."""
    if layers.empty or not isinstance(order, list) or len(order) < 2:
        return layers, ""
    order = [int(i) for i in order]
    if order == sorted(order, reverse=True) and set(order) == set(layers["layer"].unique()):
        return layers, ""  # registration order is depth order already
    position = {layer: len(order) - 1 - i for i, layer in enumerate(order)}
    kept = layers[layers["layer"].isin(position)].copy()
    kept["layer"] = kept["layer"].map(position).astype(int)
    shown = ", ".join(str(i) for i in reversed(order))
    note = (
        f" Layers are counted from the input in the order the backward pass reached them "
        f"(recorded layers {shown}), not in the order the model registers them."
    )
    return kept, note


def _outcome(
    epochs: pd.DataFrame, arch: str, dataset: str | None, facts: dict[str, Any]
) -> _Outcome:
    """The last epoch's outcome against the data's chance level: a built-in dataset's class
    balance; a custom run's probe labels (probe=(x, y)), else accuracy is not judged."""
    last = epochs.loc[epochs["epoch"].idxmax()]
    pred_std = float(last["pred_std"])
    if arch != CUSTOM_ARCH:
        return _Outcome(
            int(last["epoch"]), float(last["test_acc"]), pred_std, dataset_chance(dataset)
        )
    probe = facts.get("probe") or {}
    value = lambda k: float(probe[k]) if isinstance(probe.get(k), int | float) else math.nan  # noqa: E731
    acc, chance = value("accuracy"), value("chance")
    if not math.isfinite(chance):  # no labels: the chance level is unknown (NaN never at chance)
        acc, chance = math.nan, CHANCE_ACC
    return _Outcome(int(last["epoch"]), acc, pred_std, chance, value("top_class_frac"), value("r2"))


def _healthy(
    epochs: pd.DataFrame, layers: pd.DataFrame, outcome: _Outcome | None, arch: str
) -> Finding:
    parts, evidence = [], {}
    if not layers.empty:
        e_first = int(layers["epoch"].min())
        ratio = _ratio(_norms_at(layers, e_first))
        if ratio is not None:
            parts.append(
                f"at epoch {e_first} the first layer's gradient norm is {_log10_text(ratio)} "
                f"times the output layer's"
            )
            evidence["ratio_log10_first"] = _log10(ratio)
    if outcome is not None:
        std, acc = outcome.pred_std, outcome.test_acc
        if math.isfinite(std):
            parts.append(f"at the last epoch predictions vary (std {_sci(std)})")
            evidence["pred_std"] = std
        if math.isfinite(acc):
            parts.append(f"accuracy is {acc:.3f} (chance {outcome.chance:.3f})")
            evidence.update(test_acc=acc, chance_acc=outcome.chance)
        elif math.isfinite(outcome.r2):
            parts.append(f"R^2 on the probe is {outcome.r2:.3f}")
            evidence["r2"] = outcome.r2
        elif arch == CUSTOM_ARCH:
            parts.append(
                "the fit cannot be judged: no probe labels were handed in (watch(..., "
                "probe=(x, y)) gives accuracy against chance for classes, R^2 for targets)"
            )
    detail = "No problems found: " + "; ".join(parts) + "." if parts else "No problems found."
    return Finding("healthy", "ok", "Healthy", detail, (), evidence)


def badge(findings: list[Finding]) -> str:
    """A one-word label for a runs table: the most serious finding's kind."""
    if not findings:
        return "empty"
    worst = min(findings, key=_sort_key)
    if worst.kind == "vanishing" and worst.severity == "warn":
        return RECOVERED_BADGE
    return worst.kind.replace("_", " ")
