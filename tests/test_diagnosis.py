"""Diagnosis of synthetic runs: each finding, its numbers, and the threshold edges."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest

from gradscope.analysis.diagnosis import Finding, badge, diagnose

NAN = float("nan")


def layers_frame(
    norms: dict[int, list[float]],
    *,
    act_std: list[float] | None = None,
    saturated: list[float] | None = None,
    dead: list[float] | None = None,
    grad_max_abs: float = 0.1,
    run_id: str = "r1",
) -> pd.DataFrame:
    """One row per (epoch, layer); unit statistics are the same at every epoch unless given."""
    rows = []
    for epoch, per_layer in norms.items():
        for layer, norm in enumerate(per_layer):
            rows.append(
                {
                    "run_id": run_id,
                    "run_label": "test run",
                    "epoch": epoch,
                    "layer": layer,
                    "grad_norm": norm,
                    "grad_mean_abs": norm / 10,
                    "grad_std": norm / 10,
                    "grad_max_abs": grad_max_abs,
                    "weight_norm": 1.0,
                    "update_ratio": 1e-3,
                    "act_mean": 0.5,
                    "act_std": act_std[layer] if act_std else 0.3,
                    "saturated_frac": saturated[layer] if saturated else 0.0,
                    "dead_frac": dead[layer] if dead else NAN,
                }
            )
    return pd.DataFrame(rows)


def epochs_frame(
    n: int = 3,
    *,
    test_acc: float = 0.95,
    pred_std: float = 0.3,
    losses: list[float] | None = None,
    run_id: str = "r1",
) -> pd.DataFrame:
    losses = losses if losses is not None else [0.5 / (e + 1) for e in range(n)]
    return pd.DataFrame(
        {
            "run_id": run_id,
            "run_label": "test run",
            "epoch": range(1, n + 1),
            "train_loss": losses,
            "train_acc": test_acc,
            "test_loss": losses,
            "test_acc": test_acc,
            "pred_std": pred_std,
            "seconds": 0.1,
        }
    )


HEALTHY_NORMS = [0.2, 0.3, 0.25, 0.4]


def run(epochs: pd.DataFrame, layers: pd.DataFrame, **facts: object) -> list[Finding]:
    facts = {"arch": "sigmoid", "status": "completed", "depth": 6} | facts
    return diagnose(epochs, layers, **facts)  # type: ignore[arg-type]


def kinds(findings: list[Finding]) -> list[str]:
    return [f.kind for f in findings]


def only(findings: list[Finding], kind: str) -> Finding:
    matches = [f for f in findings if f.kind == kind]
    assert len(matches) == 1, kinds(findings)
    return matches[0]


# --- Vanishing ------------------------------------------------------------------------------


# Output layer 6 has norm 1; walking back, layer 3 is the first at least 1000x smaller.
VANISHING = [1e-9, 1e-7, 1e-5, 1e-4, 1e-2, 1e-1, 1.0]


def test_vanishing_run_reports_ratio_and_first_fallen_layer() -> None:
    findings = run(epochs_frame(), layers_frame({1: VANISHING, 2: VANISHING, 3: VANISHING}))
    f = only(findings, "vanishing")
    assert f.severity == "bad"
    assert "10^-9.0" in f.detail
    assert "fallen 1000x at layer 3, 3 layer(s) below the output" in f.detail
    assert "epoch 1" in f.detail and "last epoch (3)" in f.detail
    assert any("ReLU" in c for c in f.cures) and any("residual" in c for c in f.cures)
    assert badge(findings) == "vanishing"


def test_relu_vanishing_suggests_he_init() -> None:
    f = only(run(epochs_frame(), layers_frame({1: VANISHING}), arch="relu"), "vanishing")
    assert any("He init" in c for c in f.cures)
    assert not any(c.startswith("Use ReLU") for c in f.cures)


def test_vanishing_only_at_last_epoch_is_found() -> None:
    layers = layers_frame({1: HEALTHY_NORMS, 2: [1e-4, 1e-2, 0.1, 1.0]})
    f = only(run(epochs_frame(2), layers), "vanishing")
    assert "last epoch (2) it is 10^-4.0" in f.detail
    assert "at epoch 2" in f.detail  # the layer walk uses the epoch where it vanished


def test_underflowed_first_layer_is_vanishing() -> None:
    f = only(run(epochs_frame(), layers_frame({1: [0.0, 1e-3, 1.0]})), "vanishing")
    assert "exactly 0" in f.detail


@pytest.mark.parametrize(("first", "vanishes"), [(1e-3, True), (1.001e-3, False)])
def test_vanishing_threshold_edge(first: float, vanishes: bool) -> None:
    findings = run(epochs_frame(), layers_frame({1: [first, 0.1, 1.0]}))
    assert ("vanishing" in kinds(findings)) is vanishes
    assert (kinds(findings) == ["healthy"]) is not vanishes


def test_contraction_is_named_when_spread_shrinks_without_saturation() -> None:
    shrinking = [0.08 / 7**i for i in range(len(VANISHING))]
    f = only(run(epochs_frame(), layers_frame({1: VANISHING}, act_std=shrinking)), "vanishing")
    assert "contracts rather than saturates" in f.detail
    assert "7.0x per layer" in f.detail
    assert f.evidence["contraction_per_layer"] == pytest.approx(7.0)


@pytest.mark.parametrize(
    ("saturated", "phrase"),
    [
        (0.0, "no unit is saturated"),
        (0.001, "under 1% of units are saturated"),
        (0.04, "at most 4% of units are saturated"),
        (NAN, "saturation does not apply"),
    ],
)
def test_contraction_words_the_saturated_share_sensibly(saturated: float, phrase: str) -> None:
    # "at most 0% of units are saturated" hedges on nothing: a zero share is said plainly.
    shrinking = [0.08 / 7**i for i in range(len(VANISHING))]
    layers = layers_frame({1: VANISHING}, act_std=shrinking, saturated=[saturated] * len(VANISHING))
    f = only(run(epochs_frame(), layers), "vanishing")
    assert "contracts rather than saturates" in f.detail
    assert phrase in f.detail
    assert "0%" not in f.detail.replace("10^", "")


def test_no_contraction_claim_when_spread_holds_or_units_saturate() -> None:
    steady = run(epochs_frame(), layers_frame({1: VANISHING}))
    assert "contracts" not in only(steady, "vanishing").detail
    shrinking = [0.08 / 7**i for i in range(len(VANISHING))]
    saturated = [0.3] * len(VANISHING)  # above LOW_SATURATION, below SATURATED_FRAC
    f = only(
        run(epochs_frame(), layers_frame({1: VANISHING}, act_std=shrinking, saturated=saturated)),
        "vanishing",
    )
    assert "contracts" not in f.detail


# --- Healthy, exploding ---------------------------------------------------------------------


def test_healthy_run_is_healthy() -> None:
    findings = run(epochs_frame(), layers_frame({1: HEALTHY_NORMS, 3: HEALTHY_NORMS}))
    assert kinds(findings) == ["healthy"]
    assert findings[0].severity == "ok"
    assert "0.950" in findings[0].detail
    assert badge(findings) == "healthy"


def test_exploding_towards_input() -> None:
    f = only(run(epochs_frame(), layers_frame({1: [1e4, 10.0, 1.0]})), "exploding")
    assert f.severity == "bad" and "10^4.0" in f.detail
    assert any("Clip" in c for c in f.cures)


@pytest.mark.parametrize(("first", "explodes"), [(1e3, False), (1.01e3, True)])
def test_exploding_threshold_edge(first: float, explodes: bool) -> None:
    findings = run(epochs_frame(), layers_frame({1: [first, 10.0, 1.0]}))
    assert ("exploding" in kinds(findings)) is explodes


def test_infinite_gradient_values_are_exploding() -> None:
    findings = run(epochs_frame(), layers_frame({1: HEALTHY_NORMS}, grad_max_abs=math.inf))
    assert "inf" in only(findings, "exploding").detail


# --- Divergence and NaN -----------------------------------------------------------------------


def test_nan_filled_diverged_run_is_diverged_and_nan_is_not_dead() -> None:
    nan_layers = layers_frame(
        {1: [NAN] * 4, 2: [NAN] * 4},
        act_std=[NAN] * 4,
        saturated=[NAN] * 4,
        dead=[NAN] * 4,
        grad_max_abs=NAN,
    )
    epochs = epochs_frame(2, losses=[0.7, NAN], pred_std=NAN, test_acc=NAN)
    findings = run(epochs, nan_layers, arch="resnet", status="diverged")
    assert kinds(findings) == ["diverged"]
    assert "epoch 2" in findings[0].detail
    assert badge(findings) == "diverged"


def test_non_finite_loss_is_diverged_whatever_the_status() -> None:
    epochs = epochs_frame(3, losses=[0.7, 0.6, math.inf])
    findings = run(epochs, layers_frame({1: HEALTHY_NORMS}), status="completed")
    assert "epoch 3" in only(findings, "diverged").detail


def test_diverged_badge_outranks_vanishing() -> None:
    findings = run(epochs_frame(), layers_frame({1: VANISHING}), status="diverged")
    assert kinds(findings)[0] == "diverged" and "vanishing" in kinds(findings)
    assert badge(findings) == "diverged"


# --- Collapse -------------------------------------------------------------------------------


def test_collapsed_output_at_chance() -> None:
    findings = run(epochs_frame(test_acc=0.5, pred_std=2e-5), layers_frame({1: HEALTHY_NORMS}))
    f = only(findings, "collapsed")
    assert f.severity == "bad"
    assert "same output for every input" in f.detail and "2.0e-05" in f.detail
    assert badge(findings) == "collapsed"


def test_nearly_constant_output_with_good_accuracy_is_only_a_warning() -> None:
    findings = run(epochs_frame(test_acc=0.9, pred_std=2e-5), layers_frame({1: HEALTHY_NORMS}))
    f = only(findings, "collapsed")
    assert f.severity == "warn" and "same output" not in f.detail


@pytest.mark.parametrize(("pred_std", "collapsed"), [(1e-3, False), (0.999e-3, True)])
def test_collapse_threshold_edge(pred_std: float, collapsed: bool) -> None:
    findings = run(epochs_frame(test_acc=0.5, pred_std=pred_std), layers_frame({1: HEALTHY_NORMS}))
    assert ("collapsed" in kinds(findings)) is collapsed


@pytest.mark.parametrize(("acc", "severity"), [(0.55, "bad"), (0.45, "bad"), (0.56, "warn")])
def test_chance_margin_edge(acc: float, severity: str) -> None:
    findings = run(epochs_frame(test_acc=acc, pred_std=1e-5), layers_frame({1: HEALTHY_NORMS}))
    assert only(findings, "collapsed").severity == severity


def test_collapse_uses_the_last_epoch() -> None:
    epochs = epochs_frame(3)
    epochs.loc[epochs["epoch"] < 3, "pred_std"] = 1e-6  # collapsed early, recovered by the end
    assert "collapsed" not in kinds(run(epochs, layers_frame({1: HEALTHY_NORMS})))


# --- Unit health ----------------------------------------------------------------------------


@pytest.mark.parametrize(("frac", "flagged"), [(0.5, False), (0.6, True)])
def test_saturated_threshold_edge(frac: float, flagged: bool) -> None:
    layers = layers_frame({1: HEALTHY_NORMS}, saturated=[0.0, frac, 0.0, 0.0])
    findings = run(epochs_frame(), layers)
    assert ("saturated" in kinds(findings)) is flagged
    if flagged:
        assert "layer 1" in only(findings, "saturated").detail
        assert "60%" in only(findings, "saturated").detail


def test_saturated_output_layer_is_not_a_fault() -> None:
    layers = layers_frame({1: HEALTHY_NORMS}, saturated=[0.0, 0.0, 0.0, 0.95])
    assert kinds(run(epochs_frame(), layers)) == ["healthy"]


def test_unit_health_uses_the_last_epoch() -> None:
    early = layers_frame({1: HEALTHY_NORMS}, dead=[0.9, 0.9, 0.9, NAN])
    late = layers_frame({2: HEALTHY_NORMS}, dead=[0.1, 0.1, 0.1, NAN])
    assert "dead" not in kinds(run(epochs_frame(2), pd.concat([early, late]), arch="relu"))
    flipped = pd.concat([late.assign(epoch=1), early.assign(epoch=2)])
    assert "dead" in kinds(run(epochs_frame(2), flipped, arch="relu"))


def test_dead_relu_units_and_nan_is_not_dead() -> None:
    layers = layers_frame({1: HEALTHY_NORMS}, dead=[NAN, 0.7, 0.51, NAN])
    f = only(run(epochs_frame(), layers, arch="relu"), "dead")
    assert f.severity == "warn"
    assert "70%" in f.detail and "layer 1" in f.detail and "layer(s) 2" in f.detail
    nan_only = layers_frame({1: HEALTHY_NORMS}, dead=[NAN, NAN, NAN, NAN])
    assert kinds(run(epochs_frame(), nan_only, arch="relu")) == ["healthy"]


# --- Shape of the API -----------------------------------------------------------------------


def test_findings_are_frozen_and_sorted_by_severity() -> None:
    layers = layers_frame({1: VANISHING}, saturated=[0.0, 0.9, 0, 0, 0, 0, 0])
    findings = run(epochs_frame(test_acc=0.5, pred_std=1e-6), layers)
    ranks = [{"bad": 0, "warn": 1, "ok": 2}[f.severity] for f in findings]
    assert ranks == sorted(ranks) and set(kinds(findings)) == {
        "vanishing",
        "collapsed",
        "saturated",
    }
    with pytest.raises(dataclasses.FrozenInstanceError):
        findings[0].kind = "healthy"  # type: ignore[misc]


def test_empty_run_and_several_runs() -> None:
    empty_findings = run(epochs_frame(0), layers_frame({}))
    assert kinds(empty_findings) == ["empty"] and badge(empty_findings) == "empty"
    assert badge([]) == "empty"
    two = pd.concat(
        [layers_frame({1: HEALTHY_NORMS}), layers_frame({1: HEALTHY_NORMS}, run_id="r2")]
    )
    with pytest.raises(ValueError, match="one run"):
        run(epochs_frame(), two)


# --- Rules that read the whole run ---------------------------------------------------------------


def test_vanishing_that_recovered_in_a_run_that_learned_is_a_warning_naming_the_epoch() -> None:
    layers = layers_frame({1: VANISHING, 2: VANISHING, 3: HEALTHY_NORMS, 4: HEALTHY_NORMS})
    found = run(epochs_frame(4), layers)
    f = only(found, "vanishing")
    assert f.severity == "warn" and "recovered by epoch 3" in f.detail
    assert f.evidence["recovered_epoch"] == 3
    assert f.evidence["ratio_log10_first"] == pytest.approx(-9.0)
    assert badge(found) == "vanished early"


@pytest.mark.parametrize(("acc", "pred_std"), [(0.52, 0.3), (0.9, 1e-4)])
def test_a_recovered_ratio_is_still_bad_when_the_run_is_at_chance_or_collapsed(
    acc: float, pred_std: float
) -> None:
    layers = layers_frame({1: VANISHING, 3: HEALTHY_NORMS})
    f = only(run(epochs_frame(test_acc=acc, pred_std=pred_std), layers), "vanishing")
    assert f.severity == "bad" and "The ratio recovered, but the" in f.detail
    assert ("at chance" if acc == 0.52 else "output collapsed") in f.detail


@pytest.mark.parametrize(("acc", "expected"), [(0.55, "not_learning"), (0.551, "healthy")])
def test_a_run_at_chance_is_not_learning_never_healthy(acc: float, expected: str) -> None:
    found = run(epochs_frame(test_acc=acc), layers_frame({1: HEALTHY_NORMS}))
    assert kinds(found) == [expected]
    if expected == "not_learning":
        assert found[0].severity == "bad" and found[0].evidence["test_acc"] == acc
        assert badge(found) == "not learning"


def test_contraction_leaves_out_layers_below_the_float32_noise_floor() -> None:
    # 7x per layer down to 1e-5, then noise at ~1e-9 (what a depth-20 sigmoid net reads).
    stds = [0.08 / 7**i for i in range(5)] + [1e-9, 2e-9]
    f = only(run(epochs_frame(), layers_frame({1: VANISHING}, act_std=stds)), "vanishing")
    assert f.evidence["contraction_per_layer"] == pytest.approx(7.0)
    assert f.evidence["act_std_floor"] == 1e-6
    assert "2 deeper layer(s)" in f.detail


def test_an_explosion_inside_a_diverged_epoch_is_named_with_its_numbers() -> None:
    layers = layers_frame({1: [NAN] * 3}, grad_max_abs=NAN)
    layers["finite_first_max_abs"] = [29.0, 10.0, 5.0]
    layers["finite_max_abs"] = [1e12, 1e9, 3e3]
    layers["finite_last_norm"] = [1e11, 1e8, 1e3]
    epochs = epochs_frame(1, losses=[NAN])
    epochs["first_nonfinite_step"] = [4.0]
    found = run(epochs, layers, status="diverged", arch="resnet", depth=20)
    boom = only(found, "exploding")
    assert "grew from 2.9e+01 to 1.0e+12 within 3 step(s) of epoch 1" in boom.detail
    assert boom.evidence["first_nonfinite_step"] == 4
    assert boom.evidence["max_abs_grad"] == 1e12
    assert only(found, "diverged").evidence["first_nonfinite_step"] == 4
    assert set(boom.to_json()) == {"kind", "severity", "title", "detail", "cures", "evidence"}
    # Below the limit before turning NaN: diverged, but no explosion is claimed.
    layers["finite_max_abs"] = [50.0, 10.0, 5.0]
    assert "exploding" not in kinds(run(epochs, layers, status="diverged"))
