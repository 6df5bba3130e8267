"""Live warnings in the dashboard (Runs table and Compare's diagnosis, as they arrive), a failed
custom run shown honestly (no full progress bar, never healthy), and the runs table's badge
agreeing with the full diagnosis on custom runs with model facts and warnings."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from dashboard_helpers import add_run, assert_ok, open_app, shown_text
from torch import nn

import gradscope
from gradscope.analysis.badges import badges
from gradscope.analysis.diagnosis import SPIKE_EXPLODE, badge, diagnose
from gradscope.cli.run_view import run_diagnosis
from gradscope.db import frames
from gradscope.db.engine import make_engine
from gradscope.db.queries import run_document
from gradscope.db.warnings import add_warnings, warning_summary
from gradscope.vocab.warning_kinds import WARNING_KINDS


def spike(step: int, layer: int, factor: float, kind: str = "spike") -> dict[str, object]:
    return {
        "kind": kind,
        "epoch": 1,
        "step": step,
        "layer": layer,
        "value": factor * 0.01,
        "baseline": 0.01,
        "factor": factor,
        "message": f"step {step}: layer {layer} spiked",
    }


def runs_table(at) -> pd.DataFrame:  # noqa: ANN001
    (table,) = [d.value for d in at.dataframe if "diagnosis" in d.value.columns]
    return table


def test_a_running_runs_warnings_show_on_runs_and_compare_as_they_arrive(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    db = tmp_path / "live.db"
    engine = make_engine(str(db), create=True)
    quiet = add_run(engine, name="quiet", epochs=3, status="running", recorded=1)
    loud = add_run(engine, name="loud", epochs=3, status="running", recorded=1, seed=1)
    at = open_app(monkeypatch, db)
    assert "warnings" not in runs_table(at).columns  # no run has one: no empty column

    add_warnings(engine, loud, [spike(40, 2, 45.0)])
    at.run()
    assert_ok(at)
    table = runs_table(at).set_index("name")
    assert table.at["loud", "warnings"] == "1 · step 40, layer 2, 45x"
    assert table.at["quiet", "warnings"] == ""

    add_warnings(engine, loud, [spike(57, 1, 320.0)])
    at.run()
    assert runs_table(at).set_index("name").at["loud", "warnings"] == "2 · step 57, layer 1, 320x"

    at = open_app(monkeypatch, db, "compare", {"runs": f"{loud},{quiet}"})
    text = shown_text(at)
    assert "Live warnings: 2" in text
    assert "step 57 (epoch 1) · layer 1 · spike · 320x its level" in text.replace("\\", "")
    # The same diagnosis as `gradscope show`: the 320x spike is an explosion.
    assert "Exploding gradients" in text
    add_warnings(engine, loud, [spike(60, 1, math.nan, "nonfinite")])
    at.run()
    assert "Live warnings: 3" in shown_text(at)
    engine.dispose()


def test_a_failed_custom_run_is_never_healthy_and_never_shown_complete(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    db = tmp_path / "failed.db"
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 4), torch.randint(0, 2, (32,))
    with pytest.raises(RuntimeError), gradscope.init(db=str(db), name="broken") as run:
        run.watch(model, opt)
        for epoch in range(5):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            run.log_epoch(train_loss=loss.detach())
            if epoch == 1:
                raise RuntimeError("the data loader broke")
    with gradscope.init(db=str(db), name="fine") as done:
        done.watch(model, opt)
        for _ in range(2):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            done.log_epoch(train_loss=loss.detach())
    at = open_app(monkeypatch, db)
    table = runs_table(at).set_index("name")
    broken, fine = table.loc["broken"], table.loc["fine"]
    assert broken["status"] == "failed" and list(broken["diagnosis"]) == ["failed"]
    assert pd.isna(broken["progress"]) and broken["epochs"] == "2/?"
    assert fine["progress"] == 1.0 and fine["epochs"] == "2/2"
    engine = make_engine(str(db))
    assert badge(run_diagnosis(run_document(engine, run.id))) == "failed"
    engine.dispose()


# -- badges and diagnosis agree on custom runs ----------------------------------------------------

# Gradient norms per registered layer (0, 1, 2) at both epochs. "hidden" is a net registered
# head first (layer 0 is the head): by registration order healthy, by backward order vanishing.
PROFILES = {
    "healthy": (0.2, 0.3, 0.4),
    "vanishing": (1e-7, 1e-3, 0.5),
    "hidden": (0.5, 1e-7, 1e-3),
    "recovering": (1e-7, 1e-3, 0.5),  # the last epoch recovers
}
PROBES = {
    "none": None,
    "learnt": {"accuracy": 0.9, "chance": 0.5, "top_class_frac": 0.5},
    "chance": {"accuracy": 0.52, "chance": 0.5, "top_class_frac": 0.6},
    "one class": {"accuracy": 0.8, "chance": 0.8, "top_class_frac": 1.0},
    "regression": {"r2": 0.01},
}


# Live warnings a custom run may hold: spikes below and above SPIKE_EXPLODE (the small one
# foretells a divergence when the run diverged), and a growth warning after the first
# non-finite gradient (it foretold nothing). A growth warning before it: the real-database test
# below.
WARNED = {
    "none": [],
    "small spike": [spike(20, 1, 50.0)],
    "big spike": [spike(20, 1, SPIKE_EXPLODE * 3)],
    "NaN, then growth": [spike(20, 1, math.nan, "nonfinite"), spike(25, 1, 12.0, "growth")],
}


def summary_of(run_id: str, rows: list[dict]) -> dict[str, object]:
    """gradscope.db.warnings.warning_summary's columns the badge reads, computed directly."""
    trend = [r["step"] for r in rows if r["kind"] in ("spike", "growth")]
    nonfinite = [r["step"] for r in rows if r["kind"] == "nonfinite"]
    spikes = [r["factor"] for r in rows if r["kind"] == "spike"]
    return {
        "run_id": run_id,
        "spike_max": max(spikes, default=math.nan),
        "first_warned_step": min(trend, default=math.nan),
        "nonfinite_step": min(nonfinite, default=math.nan),
    }


def custom_case(profile: str, probe: str, pred_std: float, warned: str, dead: float):  # noqa: ANN201
    norms = PROFILES[profile]
    last = (0.3, 0.3, 0.5) if profile == "recovering" else norms
    layers = pd.DataFrame(
        [
            {"epoch": e, "layer": i, "grad_norm": g, "grad_max_abs": g, "act_std": 0.3}
            for e, gs in ((1, norms), (4, last))
            for i, g in enumerate(gs)
        ]
    ).assign(saturated_frac=np.nan, dead_frac=dead)
    epochs = pd.DataFrame(
        {"epoch": [4], "train_loss": [0.4], "test_loss": [np.nan], "test_acc": [np.nan]}
    ).assign(pred_std=pred_std)
    facts: dict[str, object] = {"adaptive_optimizer": False, "activations": ["relu"]}
    facts["backward_order"] = [1, 2, 0] if profile == "hidden" else [2, 1, 0]
    if PROBES[probe] is not None:
        facts["probe"] = PROBES[probe]
    rows = pd.DataFrame(
        WARNED[warned],
        columns=["kind", "epoch", "step", "layer", "value", "baseline", "factor", "message"],
    )
    return layers, epochs, facts, rows


@pytest.mark.slow
def test_badges_agree_with_diagnose_on_custom_runs_with_facts_and_warnings() -> None:
    grid = itertools.product(PROFILES, PROBES, (0.2, 1e-5), WARNED, (0.0, 0.8))
    runs, all_layers, last_epochs, all_facts, summaries, expected = [], [], [], {}, [], {}
    for n, (profile, probe, pred_std, warned_set, dead) in enumerate(grid):
        for status in ("completed", "running", "diverged" if n % 3 == 0 else "failed"):
            run_id = f"r{n}-{status}"
            layers, epochs, facts, warned = custom_case(profile, probe, pred_std, warned_set, dead)
            found = diagnose(
                epochs,
                layers,
                arch="custom",
                status=status,
                depth=3,
                facts=facts,
                warnings=warned,
            )
            expected[run_id] = badge(found)
            runs.append({"id": run_id, "status": status, "arch": "custom", "dataset": "custom"})
            all_layers.append(layers.assign(run_id=run_id))
            last_epochs.append(epochs.assign(run_id=run_id))
            all_facts[run_id] = facts
            if WARNED[warned_set]:
                summaries.append(summary_of(run_id, WARNED[warned_set]))
    fast = badges(
        pd.DataFrame(runs),
        pd.concat(all_layers, ignore_index=True),
        pd.concat(last_epochs, ignore_index=True),
        pd.DataFrame(summaries),
        all_facts,
    )
    wrong = {i: (fast[i], want) for i, want in expected.items() if fast[i] != want}
    assert not wrong, list(wrong.items())[:5]
    # The grid reaches every kind the facts and warnings can decide.
    assert set(expected.values()) >= {
        "healthy",
        "failed",
        "diverged",
        "exploding",
        "vanishing",
        "vanished early",
        "collapsed",
        "not learning",
        "dead",
    }


def test_runs_table_badges_equal_show_on_a_real_database(tmp_path: Path) -> None:
    """Custom runs with probe labels and stored warnings, beside built-in ones: the badge the
    runs table reads from run_ends equals `gradscope show`'s diagnosis of each run."""
    db = tmp_path / "agree.db"
    engine = make_engine(str(db), create=True)
    add_run(engine, name="built-in")
    torch.manual_seed(0)
    x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
    ids = []
    for lr, labels in ((0.1, True), (0.0, True), (0.1, False)):
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        opt = torch.optim.SGD(model.parameters(), lr=lr)
        with gradscope.init(db=str(db)) as run:
            run.watch(model, opt, probe=(x[:32], y[:32]) if labels else x[:32])
            for _ in range(3):
                for i in range(0, 64, 16):
                    loss = nn.functional.cross_entropy(model(x[i : i + 16]), y[i : i + 16])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                run.log_epoch(train_loss=loss.detach())
        ids.append(run.id)
    add_warnings(engine, ids[0], [spike(5, 1, SPIKE_EXPLODE * 2)])
    # A growth warning before the first non-finite gradient foretold it: exploding too.
    add_warnings(engine, ids[2], [spike(3, 0, 12.0, "growth"), spike(7, 0, math.nan, "nonfinite")])
    ends = frames.run_ends(engine)
    summary = warning_summary(engine).set_index("run_id")
    assert sorted(summary.index) == sorted([ids[0], ids[2]])
    assert summary.loc[ids[2], ["first_warned_step", "nonfinite_step"]].tolist() == [3.0, 7.0]
    fast = badges(frames.runs(engine), ends.layers, ends.epochs, ends.warnings, ends.facts)
    for run_id in fast.index:
        assert fast[run_id] == badge(run_diagnosis(run_document(engine, run_id))), run_id
    assert fast[ids[0]] == "exploding" and fast[ids[2]] == "exploding"
    engine.dispose()


# -- built-in runs: the batched engine's live check -----------------------------------------------

# SGD with momentum 0.99 builds up over the first steps: NaN at step 12, after the warm-up.
DIVERGING = {"arch": "resnet", "depth": 14, "width": 32, "optimizer": "sgd", "lr": 0.1}
DIVERGING |= {"momentum": 0.99, "samples": 1024, "epochs": 2, "device": "cpu"}


class Keep:
    """A recorder that keeps epochs and live warnings in memory."""

    def __init__(self) -> None:
        self.records: list = []
        self.warned: list[dict] = []

    def start(self, layers, points, device) -> None:  # noqa: ANN001
        pass

    def epoch(self, record) -> bool:  # noqa: ANN001
        self.records.append(record)
        return False

    def warnings(self, rows: list[dict]) -> None:
        self.warned += rows


def test_a_diverging_built_in_run_stores_a_warning_before_its_first_non_finite_step(
    tmp_path: Path,
) -> None:
    from gradscope.runner.foreground import train_foreground

    torch.set_num_threads(1)
    engine = make_engine(str(tmp_path / "b.db"), create=True)
    run_id, _ = train_foreground(engine, {k: str(v) for k, v in DIVERGING.items()}, progress=False)
    doc = run_document(engine, run_id)
    assert doc["status"] == "diverged"
    nan_step = min(e["first_nonfinite_step"] for e in doc["epochs"] if e["first_nonfinite_step"])
    before = [w for w in doc["warnings"] if w["kind"] != "nonfinite" and w["step"] < nan_step]
    assert before, (nan_step, doc["warnings"])
    assert all(w["layer"] is not None and w["factor"] >= 30 for w in before)
    assert any(w["kind"] == "nonfinite" for w in doc["warnings"])
    engine.dispose()


@pytest.mark.parametrize("arch", ["relu", "resnet", "sigmoid"])
def test_a_healthy_built_in_run_has_no_warning(arch: str) -> None:
    """The classic comparison (moons, depth 10, Adam 1e-3): a ReLU net whose gradients grow
    1000x from a vanished start as it learns is not warned about."""
    torch.set_num_threads(1)
    from gradscope.runner.batched import train_group
    from gradscope.vocab.config import make_config

    keep = Keep()
    cfg = {"arch": arch, "depth": 10, "width": 32, "optimizer": "adam", "lr": 1e-3, "epochs": 8}
    [result] = train_group([make_config(cfg | {"device": "cpu"})], [keep])
    assert result.status == "completed" and len(keep.records) == 8
    assert keep.warned == []


def test_batched_members_warn_exactly_as_their_solo_runs_do() -> None:
    from gradscope.runner.batched import train_group
    from gradscope.vocab.config import make_config

    torch.set_num_threads(1)
    cfgs = [
        make_config(DIVERGING | {"epochs": 3}),
        make_config(DIVERGING | {"epochs": 3, "lr": 0.003, "seed": 1}),
        make_config(DIVERGING | {"epochs": 3, "lr": 0.05, "seed": 2}),
    ]
    together = [Keep() for _ in cfgs]
    results = train_group(cfgs, together)
    assert results[0].status == "diverged" and results[1].status == "completed"
    for cfg, member in zip(cfgs, together, strict=True):
        solo = Keep()
        train_group([cfg], [solo])
        # The same warnings (kind, step, layer) with the same numbers, up to the float32
        # rounding by which a member's steps differ from its solo run's (tests/test_batched_engine).
        assert bool(member.warned) == bool(solo.warned)
        if not solo.warned:
            continue
        got, want = pd.DataFrame(member.warned), pd.DataFrame(solo.warned)
        keys = ["kind", "epoch", "step", "layer"]
        assert len(got) == len(want) and got[keys].equals(want[keys])
        for col in ("value", "baseline", "factor"):
            assert np.allclose(got[col], want[col], rtol=1e-4, equal_nan=True), col
    assert together[0].warned and together[1].warned == []


@pytest.mark.parametrize("kind", WARNING_KINDS)
def test_a_shared_run_may_carry_every_kind_of_warning(kind: str) -> None:
    """The share validator takes each kind the live checks write (it once refused "growth")."""
    from gradscope.db.share.validate import _check_warning

    row = {"kind": kind, "epoch": 1, "step": 3, "layer": 0, "message": "m"}
    _check_warning(row, epochs=2, depth=1)
    with pytest.raises(ValueError, match="is not one of"):
        _check_warning(row | {"kind": "shrink"}, epochs=2, depth=1)
