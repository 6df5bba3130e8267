"""Diagnosis of models gradscope never saw, recorded through the public API: a fast subset of
benchmarks/diagnosis_zoo.py (ground truth measured there in plain PyTorch), plus the live
warning before the NaN, the moment of divergence of API runs, and the rules' own edges."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from script_loader import load_script

from gradscope.analysis.diagnosis import builtin_facts, diagnose, fit_cures
from gradscope.analysis.spikes import SPIKE_FACTOR, TREND_STEPS, SpikeChecker, _median
from gradscope.vocab.warning_kinds import TREND_WARNINGS

_ZOO = Path(__file__).resolve().parents[1] / "benchmarks" / "diagnosis_zoo.py"


@pytest.fixture(scope="module")
def zoo():  # noqa: ANN201
    return load_script(_ZOO)


FAST = (
    "mlp-relu-binary",
    "mlp-sigmoid-deep-headfirst",
    "mlp-functional-dead",
    "mlp-shuffled-labels",
    "mlp-relu-lr-ramp",
    "mlp-growing-weights",
    "mlp-relu-deep-adam",  # norms grow 100x from a vanished start as it learns: not exploding
    "rnn-long-vanishing",  # vanishing through time (watched with time_dim and loss_fn)
)


@pytest.mark.parametrize("name", FAST)
def test_zoo_case_is_diagnosed_as_its_ground_truth(zoo, tmp_path: Path, name: str) -> None:  # noqa: ANN001
    case = next(c for c in zoo.cases() if c.name == name)
    result = zoo.run_case(case, str(tmp_path / "zoo.db"))
    assert result.truth.kinds == result.found, (result.truth.kinds, result.found)
    if result.truth.nan_step is not None:  # a spike or growth warned before the first NaN
        early = [w["step"] for w in result.warnings if w["kind"] in TREND_WARNINGS]
        assert early and min(early) < result.truth.nan_step
    elif not result.truth.kinds:
        assert result.warnings == []


def test_a_diverged_api_run_records_its_moment_and_warnings_reach_the_loop(
    zoo, tmp_path: Path
) -> None:  # noqa: ANN001
    import torch

    import gradscope
    from gradscope.db.engine import make_engine
    from gradscope.db.queries import run_document

    torch.manual_seed(0)
    x, y, _ = zoo.data("binary", 256, 16, 0)
    model = zoo.MLP(16, 32, 3, 2, "relu", False)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    seen = []
    run = gradscope.init(db=str(tmp_path / "d.db"))
    run.watch(model, opt, probe=(x[:64], y[:64]), on_warning=seen.append)
    for _ in range(12):
        for i in range(0, 256, 32):
            loss = torch.nn.functional.cross_entropy(model(x[i : i + 32]), y[i : i + 32])
            opt.zero_grad()
            loss.backward()
            opt.step()
            opt.param_groups[0]["lr"] *= 1.15
        run.log_epoch(train_loss=loss)
    assert run.finish() == "diverged"
    assert run.warnings and seen == run.warnings
    doc = run_document(make_engine(str(tmp_path / "d.db")), run.id)
    steps = [e["first_nonfinite_step"] for e in doc["epochs"] if e["first_nonfinite_step"]]
    assert steps, "the moment of divergence is recorded for an API run"
    first = next(e for e in doc["epochs"] if e["first_nonfinite_step"])
    rows = [s for s in doc["layer_stats"] if s["epoch"] == first["epoch"]]
    assert any(s["finite_max_abs"] is not None for s in rows)
    assert [w["step"] for w in doc["warnings"]] == [w.step for w in run.warnings]


@pytest.mark.parametrize("every", [1, 3])
def test_warnings_name_optimizer_steps_even_when_every_nth_step_is_measured(
    tmp_path: Path, every: int
) -> None:
    """A learning rate ramped into divergence, watched with every=N: each warning names the
    optimizer step it was measured at (a step 1 + k*N, as run.step counted it), and its value
    is that step's gradient norm as the loop computed it."""
    import torch
    from torch import nn

    import gradscope

    torch.manual_seed(0)
    x = torch.randn(256, 8)
    y = (x.sum(dim=1) > 0).long()
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU())
    model.append(nn.Linear(32, 2))
    weights = [m.weight for m in model if isinstance(m, nn.Linear)]
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    norms: dict[int, list[float]] = {}
    steps_seen = []
    run = gradscope.init(db=str(tmp_path / "every.db"), quiet=True)
    run.watch(model, opt, every=every)
    for _ in range(8):
        for i in range(0, 256, 16):
            loss = torch.nn.functional.cross_entropy(model(x[i : i + 16]), y[i : i + 16])
            opt.zero_grad()
            loss.backward()
            opt.step()
            norms[run.step] = [float(w.grad.norm()) for w in weights]
            steps_seen.append(run.step)
            opt.param_groups[0]["lr"] *= 1.12
        run.log_epoch(train_loss=loss.detach())
    run.finish()
    assert steps_seen == list(range(1, 129))
    warned = [w for w in run.warnings if w.kind in TREND_WARNINGS]
    assert warned, "the ramp is warned about"
    for w in warned:
        assert (w.step - 1) % every == 0, (w.step, every)
        assert w.value == pytest.approx(norms[w.step][w.layer], rel=1e-3), w


def test_the_first_steps_are_judged_by_their_own_median_and_a_noisy_steady_rise_warns() -> None:
    """A run that blows up before the 8-step warm-up ends is still warned about (judged against
    the median of its first steps); a layer growing 1.3x a step under noise that breaks every
    streak of steep rises is warned by the fitted rate; flat noise and a 10%-a-step wake-up
    never are."""
    found = []
    checker = SpikeChecker([0, 1, 2, 3], found.append)
    rng = np.random.default_rng(2)
    steps = np.arange(1, 65)
    fast = np.minimum(np.where(steps <= 3, 1.0, 50.0 ** (steps - 3.0)), 1e30)
    noisy = 1.3 ** np.maximum(steps - 24, 0) * np.exp(rng.normal(0, 0.25, 64))
    flat = np.exp(rng.normal(0, 0.5, 64))
    wake = 1e-4 * 1.1**steps
    norms = np.column_stack([fast, noisy, flat, wake])
    for start in range(0, 64, 16):
        checker.block(norms[start : start + 16], start)
    first = {w.layer: w for w in sorted(found, key=lambda w: -w.step)}  # each layer's first
    assert first[0].kind == "spike" and first[0].step == 4  # 50x the first 3 steps' median
    assert first[1].kind == "growth" and 24 < first[1].step < 45
    assert 2 not in first and 3 not in first


def test_spike_checker_flags_a_spike_against_the_layers_own_level_once_per_decade() -> None:
    found = []
    checker = SpikeChecker([3, 4], found.append)
    rng = np.random.default_rng(0)
    checker.block(np.exp(rng.normal(0, 0.3, (16, 2))) * [1e-6, 10.0], 0)  # tiny and large layers
    assert found == []
    block = np.exp(rng.normal(0, 0.3, (16, 2))) * [1e-6, 10.0]
    block[5, 0] = 1e-6 * SPIKE_FACTOR * 5
    block[6, 0] = 1e-6 * SPIKE_FACTOR * 6  # same decade: no second warning
    checker.block(block, 16)
    # The step it first crossed the bar (a per-step check's moment), told with that step's own
    # factor: the message's value over its level, never another step's.
    assert [(w.kind, w.layer, w.step) for w in found] == [("spike", 3, 22)]
    assert found[0].value == pytest.approx(1e-6 * SPIKE_FACTOR * 5)
    assert found[0].factor == pytest.approx(found[0].value / found[0].baseline)
    assert found[0].factor == pytest.approx(SPIKE_FACTOR * 5, rel=0.5)
    block = np.full((16, 2), 1.0)
    block[2, 1] = np.nan
    checker.block(block, 32)
    assert ("nonfinite", 4, 35) in [(w.kind, w.layer, w.step) for w in found]


def test_cures_never_suggest_what_the_run_already_does() -> None:
    facts = {"adaptive_optimizer": True, "activations": ["gelu"], "residual": True}
    facts["normalisation"] = True
    layers = pd.DataFrame(
        {"epoch": [1, 1, 1], "layer": [0, 1, 2], "grad_norm": [1e-9, 1e-5, 1.0]}
    ).assign(grad_max_abs=1.0, act_std=0.3, saturated_frac=np.nan, dead_frac=np.nan)
    epochs = pd.DataFrame({"epoch": [1], "train_loss": [0.5], "test_loss": [np.nan]}).assign(
        train_acc=np.nan, test_acc=np.nan, pred_std=0.3
    )
    found = diagnose(epochs, layers, arch="custom", status="completed", depth=3, facts=facts)
    cures = " ".join(c for f in found for c in f.cures)
    assert "Train with Adam" not in cures and "Use ReLU" not in cures
    assert "Add residual" not in cures and "normalisation layers" not in cures
    plain = fit_cures(("x",), builtin_facts({"arch": "resnet", "optimizer": "adam"}))
    assert plain == ("x",)


def test_chance_is_the_labels_majority_rate_and_a_failed_run_is_never_healthy() -> None:
    layers = pd.DataFrame({"epoch": [1, 1], "layer": [0, 1], "grad_norm": [0.2, 0.3]}).assign(
        grad_max_abs=0.1, act_std=0.3, saturated_frac=np.nan, dead_frac=np.nan
    )
    epochs = pd.DataFrame({"epoch": [1], "train_loss": [0.5], "test_loss": [0.5]}).assign(
        train_acc=0.63, test_acc=0.63, pred_std=0.2
    )
    facts = {"arch": "sigmoid", "status": "completed", "depth": 2}
    assert [f.kind for f in diagnose(epochs, layers, **facts)] == ["healthy"]
    on_bc = diagnose(epochs, layers, **facts, dataset="breast_cancer")
    assert [f.kind for f in on_bc] == ["not_learning"]
    failed = diagnose(epochs, layers, **{**facts, "status": "failed"}, error="boom")
    assert [f.kind for f in failed] == ["failed"] and "boom" in failed[0].detail
    empty = diagnose(epochs.iloc[:0], layers.iloc[:0], **{**facts, "status": "failed"})
    assert [f.kind for f in empty] == ["failed"]


def test_a_steady_growth_warns_with_the_steps_left_and_a_net_waking_up_does_not() -> None:
    """Layer 0 grows 1.6x a step from step 21 (an overflow on its way); layer 1 grows 1.1x a
    step all along (a net learning its way out of a vanished start): only layer 0 warns."""
    found = []
    checker = SpikeChecker([0, 1], found.append)
    rng = np.random.default_rng(1)
    steps = np.arange(1, 49)
    grow = np.where(steps > 20, 1.6 ** (steps - 20), 1.0) * np.exp(rng.normal(0, 0.02, 48))
    wake = 1e-4 * 1.1**steps
    norms = np.stack([grow, wake], axis=1)
    for start in range(0, 48, 16):
        checker.block(norms[start : start + 16], start)
    growth = [w for w in found if w.kind == "growth"]
    assert growth and {w.layer for w in found} == {0}
    first = growth[0]
    # By the fitted rate or, at the latest, after five steep rises to 3x its level.
    assert 20 < first.step <= 20 + TREND_STEPS + 1
    assert first.factor == pytest.approx(first.value / first.baseline)
    left = float(first.message.split("overflows float32 in about ")[1].split()[0])
    # The steps left at the rate seen (1.2-1.6x a step) from the norm now (log10 ~1).
    assert 38.5 / math.log10(1.6) - 10 < left < 38.5 / math.log10(1.2)


def test_warmup_median_is_numpys() -> None:
    """The warm-up's median (a sorted list, no numpy call) is np.median's value exactly, for
    odd and even counts, ties and tiny norms: the early levels, and so every warning, keep
    their values."""
    rng = np.random.default_rng(7)
    for n in range(1, 9):
        for _ in range(50):
            values = (10.0 ** rng.uniform(-30, 3, n)).tolist()
            if n > 2:
                values[1] = values[0]  # a tie
            assert _median(values) == float(np.median(values))
