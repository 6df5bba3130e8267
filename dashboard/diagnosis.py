"""Plain-language diagnosis of one run: what went wrong with its gradients, and what cures it.

Pure: pandas frames in, frozen `Finding`s out; no Streamlit and no database. Gradient ratios are
read at epoch 1 and at the last epoch; unit health (saturated / dead units, activation spread) at
the last epoch. NaN never counts as a dead or saturated unit: it is a symptom of divergence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import pandas as pd

# --- Thresholds (one place, so the dashboard's rules and captions agree) ------------------------
VANISH_FACTOR = 1e3  # first layer's grad norm at least this many times below the output's
EXPLODE_FACTOR = 1e3  # first layer's grad norm more than this many times above the output's
HUGE_GRAD = 1e4  # any grad norm or max |g| above this (or inf) counts as exploding
COLLAPSE_PRED_STD = 1e-3  # std of predicted probabilities below this: (nearly) constant output
CHANCE_ACC = 0.5  # binary classification
CHANCE_MARGIN = 0.05  # |test_acc - CHANCE_ACC| at most this counts as chance
SATURATED_FRAC = 0.5  # more than this fraction of a layer's sigmoid units saturated
DEAD_FRAC = 0.5  # more than this fraction of a layer's ReLU units dead
CONTRACTION_PER_LAYER = 3.0  # act_std shrinking at least this much per layer is "contraction"
LOW_SATURATION = 0.1  # ... while at most this fraction is saturated: contraction, not saturation

Severity = Literal["bad", "warn", "ok"]

# Most serious first; `badge` and the order of `diagnose`'s result follow it.
_KIND_ORDER = ("diverged", "exploding", "vanishing", "collapsed", "saturated", "dead", "empty")
_SEVERITY_ORDER = {"bad": 0, "warn": 1, "ok": 2}
_BADGES = {
    "diverged": "diverged",
    "exploding": "exploding",
    "vanishing": "vanishing",
    "collapsed": "collapsed",
    "saturated": "saturated",
    "dead": "dead",
    "empty": "empty",
    "healthy": "healthy",
}

_RELU = "Use ReLU hidden layers (arch relu): their slope is 1 where active, sigmoid's is <= 0.25."
_RESIDUAL = "Add residual connections (arch resnet) so the gradient can skip each layer."
_INIT = "Use Xavier (sigmoid) or He (ReLU) initialisation to keep the signal's spread per layer."
_HE = "Use He initialisation: PyTorch's default is not He init, so deep ReLU nets vanish too."
_ADAM = "Train with Adam, which scales each parameter's step by its own gradient size."
_LOWER_LR = "Lower the learning rate."
_CLIP = "Clip gradients by norm (e.g. max norm 1.0)."
_DIVERGED_CURES = (_LOWER_LR, _CLIP, _ADAM, _INIT)
# A user's own model (arch "custom", recorded with the gradscope API): cures name what to change
# in their code, not a built-in architecture.
_CUSTOM = "custom"
_CUSTOM_RELU = "Use ReLU (or GELU) activations: their slope is 1 where active, sigmoid's <= 0.25."
_CUSTOM_SKIP = (
    "Add residual connections or normalisation layers (BatchNorm, LayerNorm) so the gradient "
    "can skip or be rescaled at each layer."
)


@dataclass(frozen=True)
class Finding:
    """One diagnosis of a run, in plain language, with the usual cures."""

    kind: str
    severity: Severity
    title: str
    detail: str
    cures: tuple[str, ...] = ()


def _sci(x: float) -> str:
    return f"{x:.1e}"


def _pow10(log10: float) -> str:
    return f"10^{log10:.1f}"


def _vanishing_cures(arch: str) -> tuple[str, ...]:
    if arch == "sigmoid":
        return (_RELU, _RESIDUAL, _INIT, _ADAM)
    if arch == "relu":
        return (_HE, _RESIDUAL, _ADAM)
    if arch == _CUSTOM:
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


def _ratio_sentence(ratios: dict[int, float], e_first: int) -> str:
    parts = []
    for e, r in ratios.items():
        if e == e_first:
            parts.append(
                f"at epoch {e} the first layer's gradient norm is {_log10_text(r)} times the "
                f"output layer's"
            )
        else:
            parts.append(f"at the last epoch ({e}) it is {_log10_text(r)} times")
    return "; ".join(parts)


def _first_fallen(norms: pd.Series) -> int | None:
    """Walking from the output towards the input, the first layer VANISH_FACTOR below it."""
    out = float(norms.iloc[-1])
    for layer, value in norms.iloc[::-1].items():
        if math.isfinite(value) and value <= out / VANISH_FACTOR:
            return int(layer)
    return None


def _contraction(layers_last: pd.DataFrame) -> str:
    """A sentence when the activation spread shrinks strongly while few units saturate."""
    stds = layers_last.set_index("layer")["act_std"].astype(float).sort_index()
    stds = stds[stds.map(math.isfinite) & (stds > 0)]
    if len(stds) < 2:
        return ""
    sat = layers_last["saturated_frac"].astype(float)
    sat_max = float(sat.max()) if sat.notna().any() else 0.0  # NaN is "not applicable"
    span = int(stds.index[-1]) - int(stds.index[0])
    per_layer = (float(stds.iloc[0]) / float(stds.iloc[-1])) ** (1 / span)
    if per_layer < CONTRACTION_PER_LAYER or sat_max > LOW_SATURATION:
        return ""
    return (
        f" The signal contracts rather than saturates: at the last epoch the spread of the "
        f"activations across inputs shrinks about {per_layer:.0f}x per layer (act_std "
        f"{_sci(stds.iloc[0])} at layer {stds.index[0]}, {_sci(stds.iloc[-1])} at layer "
        f"{stds.index[-1]}) while at most {sat_max:.0%} of units are saturated, so deep layers "
        f"see nearly the same input for every example."
    )


def _gradient_findings(
    layers: pd.DataFrame, arch: str, depth: int, e_first: int, e_last: int
) -> list[Finding]:
    findings: list[Finding] = []
    epochs = [e_first] if e_first == e_last else [e_first, e_last]
    ratios = {e: _ratio(_norms_at(layers, e)) for e in epochs}
    known = {e: r for e, r in ratios.items() if r is not None}
    ratio_text = _ratio_sentence(known, e_first)

    vanished = [e for e, r in known.items() if r <= 1 / VANISH_FACTOR]
    if vanished:
        norms = _norms_at(layers, vanished[0])
        fallen = _first_fallen(norms)
        out_layer = int(norms.index[-1])
        where = (
            f" Walking back from the output (layer {out_layer}), the gradient norm has already "
            f"fallen {VANISH_FACTOR:.0f}x at layer {fallen}, {out_layer - fallen} layer(s) below "
            f"the output, at epoch {vanished[0]}."
            if fallen is not None
            else ""
        )
        last = layers[layers["epoch"] == e_last]
        findings.append(
            Finding(
                "vanishing",
                "bad",
                "Vanishing gradients",
                f"In this depth-{depth} {arch} net, {ratio_text}.{where} Layers near the input "
                f"barely learn.{_contraction(last)}",
                _vanishing_cures(arch),
            )
        )

    exploded = [e for e, r in known.items() if r > EXPLODE_FACTOR]
    grads = layers[["grad_norm", "grad_max_abs"]].astype(float)
    huge = grads.abs().gt(HUGE_GRAD)  # inf > HUGE_GRAD too; NaN compares False (divergence)
    if exploded or huge.to_numpy().any():
        biggest = float(grads.abs().max().max())
        parts = [ratio_text + "."] if exploded else []
        if huge.to_numpy().any():
            parts.append(f"Gradient values reach {_sci(biggest)} (limit {_sci(HUGE_GRAD)}).")
        findings.append(
            Finding(
                "exploding",
                "bad",
                "Exploding gradients",
                f"In this depth-{depth} {arch} net, " + " ".join(parts),
                (_LOWER_LR, _CLIP, _INIT),
            )
        )
    return findings


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
            (_INIT, _LOWER_LR, _CUSTOM_RELU if arch == _CUSTOM else _RELU),
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
        findings.append(Finding(kind, "warn", title, detail, cures))
    return findings


def _collapse_finding(last: pd.Series, arch: str, e_last: int) -> Finding | None:
    std = float(last["pred_std"])
    if not (math.isfinite(std) and std < COLLAPSE_PRED_STD):
        return None
    acc = float(last["test_acc"])
    if arch == _CUSTOM:  # no known chance level; pred_std is from the user's probe batch
        detail = (
            f"At the last epoch ({e_last}) the model's output varies by only {_sci(std)} over "
            f"the probe batch (limit {_sci(COLLAPSE_PRED_STD)}): nearly the same output for "
            "every input."
        )
        cures = (*_vanishing_cures(arch), _LOWER_LR)
        return Finding("collapsed", "warn", "Nearly constant output", detail, cures)
    spread = (
        f"At the last epoch ({e_last}) the predicted probability varies by only {_sci(std)} "
        f"(std over the test set, limit {_sci(COLLAPSE_PRED_STD)})"
    )
    cures = (*_vanishing_cures(arch), _LOWER_LR)
    # The tiny tolerance keeps the edge inclusive despite rounding (0.55 - 0.5 > 0.05).
    if math.isfinite(acc) and abs(acc - CHANCE_ACC) <= CHANCE_MARGIN + 1e-9:
        detail = (
            f"{spread} and test accuracy is {acc:.3f}, at chance: the model gives the same "
            f"output for every input."
        )
        return Finding("collapsed", "bad", "Collapsed output", detail, cures)
    detail = f"{spread}, although test accuracy is {acc:.3f}: the outputs are nearly constant."
    return Finding("collapsed", "warn", "Nearly constant output", detail, cures)


def _divergence_finding(epochs: pd.DataFrame, status: str, arch: str = "") -> Finding | None:
    if arch == _CUSTOM:
        # Its losses are optional (an empty one reads as NaN): the API sets the status when a
        # logged loss or a statistic becomes non-finite, and the user's loop goes on.
        if status != "diverged":
            return None
        detail = (
            "A logged loss or a gradient statistic became non-finite (NaN or inf); the run is "
            "marked diverged (training was not stopped)."
        )
        return Finding("diverged", "bad", "Training diverged", detail, _DIVERGED_CURES)
    if epochs.empty:
        bad_rows = pd.Series(dtype=int)
    else:
        losses = epochs[["train_loss", "test_loss"]].astype(float)
        bad_rows = epochs.loc[~losses.map(math.isfinite).all(axis=1), "epoch"]
    if status != "diverged" and bad_rows.empty:
        return None
    parts = []
    if status == "diverged":
        parts.append("The run was stopped as diverged.")
    if not bad_rows.empty:
        parts.append(f"The loss first became non-finite (NaN or inf) at epoch {bad_rows.min()}.")
    return Finding("diverged", "bad", "Training diverged", " ".join(parts), _DIVERGED_CURES)


def _sort_key(f: Finding) -> tuple[int, int]:
    rank = _KIND_ORDER.index(f.kind) if f.kind in _KIND_ORDER else len(_KIND_ORDER)
    return (_SEVERITY_ORDER[f.severity], rank)


def diagnose(
    epochs: pd.DataFrame, layers: pd.DataFrame, *, arch: str, status: str, depth: int
) -> list[Finding]:
    """Findings for one run, most serious first; a single "healthy" one if nothing is wrong."""
    for frame in (epochs, layers):
        if "run_id" in frame.columns and frame["run_id"].nunique() > 1:
            raise ValueError("diagnose() takes the frames of exactly one run")
    if epochs.empty and layers.empty:
        if status == "diverged":
            detail = "The run was stopped as diverged before any epoch was recorded."
            return [Finding("diverged", "bad", "Training diverged", detail, _DIVERGED_CURES)]
        return [Finding("empty", "warn", "No data yet", "No epochs have been recorded yet.")]

    findings: list[Finding] = []
    if (div := _divergence_finding(epochs, status, arch)) is not None:
        findings.append(div)
    if not layers.empty:
        e_first, e_last = int(layers["epoch"].min()), int(layers["epoch"].max())
        findings += _gradient_findings(layers, arch, depth, e_first, e_last)
        findings += _unit_findings(layers[layers["epoch"] == e_last], e_last, arch)
    if not epochs.empty:
        last = epochs.loc[epochs["epoch"].idxmax()]
        if (col := _collapse_finding(last, arch, int(last["epoch"]))) is not None:
            findings.append(col)

    if not findings:
        findings.append(_healthy(epochs, layers))
    return sorted(findings, key=_sort_key)


def _healthy(epochs: pd.DataFrame, layers: pd.DataFrame) -> Finding:
    parts = []
    if not layers.empty:
        e_first = int(layers["epoch"].min())
        ratio = _ratio(_norms_at(layers, e_first))
        if ratio is not None:
            parts.append(
                f"at epoch {e_first} the first layer's gradient norm is {_log10_text(ratio)} "
                f"times the output layer's"
            )
    if not epochs.empty:
        last = epochs.loc[epochs["epoch"].idxmax()]
        parts.append(
            f"at the last epoch predictions vary (std {_sci(float(last['pred_std']))}) and test "
            f"accuracy is {float(last['test_acc']):.3f}"
        )
    detail = "No problems found: " + "; ".join(parts) + "." if parts else "No problems found."
    return Finding("healthy", "ok", "Healthy", detail)


def badge(findings: list[Finding]) -> str:
    """A one-word label for a runs table: the most serious finding's kind."""
    if not findings:
        return "empty"
    worst = min(findings, key=_sort_key)
    return _BADGES.get(worst.kind, worst.kind)
