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

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd

from gradscope.vocab.custom import CUSTOM_ARCH

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
    "healthy",
)
# Most serious first; `badge` and the order of `diagnose`'s result follow it (severity first).
_KIND_ORDER = KINDS[:-1]
_SEVERITY_ORDER = {"bad": 0, "warn": 1, "ok": 2}

# The runs table's one-word labels, most serious first as `badge` picks them. A vanishing that
# recovered in a run that learned is a warning with a label of its own.
RECOVERED_BADGE = "vanished early"
BADGE_ORDER = (
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
BADGE_COLORS = ("red", "red", "red", "red", "red", "orange", "orange", "orange", "green")

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


def at_chance(test_acc: float) -> bool:
    return math.isfinite(test_acc) and abs(test_acc - CHANCE_ACC) <= CHANCE_MARGIN + _EDGE


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

    @property
    def stuck(self) -> bool:
        return at_chance(self.test_acc) or collapsed_output(self.pred_std)


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
    elif outcome is not None and at_chance(outcome.test_acc):
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
    epochs: pd.DataFrame, layers: pd.DataFrame, arch: str, depth: int, e_first: int, e_last: int
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
    if moment is not None and moment["finite_max_abs"] > HUGE_GRAD:
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
    return {
        "epoch": epoch,
        "first_nonfinite_step": int(row["first_nonfinite_step"]),
        "finite_max_abs": float(peak.max()),
        "finite_first_max_abs": float(start.max()) if start.notna().any() else math.nan,
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
    if at_chance(acc):
        detail = (
            f"{spread} and test accuracy is {acc:.3f}, at chance: the model gives the same "
            f"output for every input.{squeeze}"
        )
        return Finding("collapsed", "bad", "Collapsed output", detail, cures, evidence)
    detail = f"{spread}, although test accuracy is {acc:.3f}: the outputs are nearly constant."
    return Finding("collapsed", "warn", "Nearly constant output", detail + squeeze, cures, evidence)


def _not_learning_finding(outcome: _Outcome) -> Finding:
    return Finding(
        "not_learning",
        "bad",
        "Not learning",
        f"At the last epoch ({outcome.epoch}) test accuracy is {outcome.test_acc:.3f}, within "
        f"{CHANCE_MARGIN:.2f} of chance ({CHANCE_ACC:.1f} on balanced data), although the "
        f"predictions still vary (std {_sci(outcome.pred_std)}) and the gradients look normal: "
        f"the run has not learned the task yet.",
        ("Train for more epochs.", _ADAM, "Try a larger learning rate.", _INIT),
        {"test_acc": outcome.test_acc, "pred_std": outcome.pred_std, "chance_acc": CHANCE_ACC},
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
        return Finding("diverged", "bad", "Training diverged", detail, _DIVERGED_CURES)
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
    epochs: pd.DataFrame, layers: pd.DataFrame, *, arch: str, status: str, depth: int
) -> list[Finding]:
    """Findings for one run, most serious first; a single "healthy" one if nothing is wrong.

    `epochs`: epoch, train_loss, test_loss, test_acc, pred_std (and first_nonfinite_step when
    recorded); `layers`: epoch, layer, grad_norm, grad_max_abs, act_std, saturated_frac,
    dead_frac (and the finite_* columns when recorded), any number of epochs.
    """
    for frame in (epochs, layers):
        if "run_id" in frame.columns and frame["run_id"].nunique() > 1:
            raise ValueError("diagnose() takes the frames of exactly one run")
    if epochs.empty and layers.empty:
        if status == "diverged":
            detail = "The run was stopped as diverged before any epoch was recorded."
            return [Finding("diverged", "bad", "Training diverged", detail, _DIVERGED_CURES)]
        return [Finding("empty", "warn", "No data yet", "No epochs have been recorded yet.")]

    outcome = None
    if not epochs.empty:
        last = epochs.loc[epochs["epoch"].idxmax()]
        # A custom run's task, and so its chance level, is unknown: its accuracy says nothing
        # about chance (NaN never counts as at chance).
        acc = math.nan if arch == CUSTOM_ARCH else float(last["test_acc"])
        outcome = _Outcome(int(last["epoch"]), acc, float(last["pred_std"]))
    findings: list[Finding] = []
    if (div := _divergence_finding(epochs, status, arch)) is not None:
        findings.append(div)
    layers_last = layers.iloc[:0]
    van = None
    if not layers.empty:
        e_first, e_last = int(layers["epoch"].min()), int(layers["epoch"].max())
        layers_last = layers[layers["epoch"] == e_last]
        van = _vanishing_finding(layers, arch, depth, e_first, e_last, outcome)
        findings += [van] if van is not None else []
        boom = _exploding_finding(epochs, layers, arch, depth, e_first, e_last)
        findings += [boom] if boom is not None else []
        findings += _unit_findings(layers_last, e_last, arch)
    if outcome is not None:
        # The contraction is told once: with the vanishing finding when there is one.
        told = van is not None and "contraction_per_layer" in van.evidence
        if (col := _collapse_finding(outcome, arch, layers_last, not told)) is not None:
            findings.append(col)
        explained = any(f.severity == "bad" for f in findings)
        if at_chance(outcome.test_acc) and not explained:
            findings.append(_not_learning_finding(outcome))

    if not findings:
        findings.append(_healthy(epochs, layers))
    return sorted(findings, key=_sort_key)


def _healthy(epochs: pd.DataFrame, layers: pd.DataFrame) -> Finding:
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
    if not epochs.empty:
        last = epochs.loc[epochs["epoch"].idxmax()]
        std, acc = float(last["pred_std"]), float(last["test_acc"])
        parts.append(
            f"at the last epoch predictions vary (std {_sci(std)}) and test accuracy is {acc:.3f}"
        )
        evidence.update(pred_std=std, test_acc=acc)
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
