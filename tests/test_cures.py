"""Cure trials (`gradscope cure`): every cure a diagnosis names, tried as a one-setting change of
the patient's configuration on three seeds beside an unchanged control, and the verdict measured
from what those runs recorded."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from gradscope.analysis import diagnosis as dx
from gradscope.analysis.cures import (
    CONTROL,
    CURE_MARGIN,
    CURE_TABLE,
    CureRefused,
    RunOutcome,
    plan_cures,
    verdict,
)
from gradscope.analysis.diagnosis import Finding
from gradscope.cli.main import app
from gradscope.db.engine import make_engine
from gradscope.db.queries import list_runs
from gradscope.db.trials import cure_sweep_of, trial_frames
from gradscope.vocab.config import make_config

runner = CliRunner()


def finding(kind: str, *cures: str, severity: str = "bad") -> Finding:
    return Finding(kind, severity, kind, "detail", tuple(cures))  # type: ignore[arg-type]


def patient(**values: Any) -> dict[str, Any]:
    cfg = make_config({"device": "cpu", **values}).model_dump()
    return {"id": "p" * 36, "name": "the patient", "status": "completed", "config": cfg}


VANISHING = finding("vanishing", dx._RELU, dx._RESIDUAL, dx._INIT)
COLLAPSED = finding("collapsed", dx._RELU, dx._RESIDUAL, dx._INIT, dx._LOWER_LR)
DIVERGED = finding("diverged", dx._LOWER_LR, dx._CLIP, dx._ADAM, dx._INIT)
DEAD = finding(
    "dead",
    dx._LOWER_LR,
    dx._HE,
    "Use a leaky ReLU or residual connections to keep a gradient path.",
    severity="warn",
)
NOT_LEARNING = finding(
    "not_learning", "Train for more epochs.", dx._ADAM, "Try a larger learning rate.", dx._INIT
)

CASES = [
    (patient(arch="sigmoid", depth=10), [VANISHING, COLLAPSED]),
    (patient(arch="resnet", optimizer="sgd", lr=0.1, depth=20), [DIVERGED]),
    (patient(arch="resnet", block_activation="sigmoid", seed=7), [VANISHING]),
    (patient(arch="relu", optimizer="sgd", lr=0.1, momentum=0.9), [DEAD, DIVERGED]),
    (patient(arch="sigmoid", optimizer="sgd", lr=0.01, seed=2**31 - 1), [NOT_LEARNING]),
]


def diff(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    return {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}


@pytest.mark.parametrize(("sick", "findings"), CASES)
def test_every_variant_differs_from_the_patient_in_exactly_one_setting(
    sick: dict[str, Any], findings: list[Finding]
) -> None:
    plan, design = plan_cures(sick, findings)
    cfg = sick["config"]
    seeds = sorted({s.config["seed"] for s in plan.specs})
    assert cfg["seed"] in seeds and len(seeds) == 3
    assert all(0 <= s <= 2**31 - 1 for s in seeds)
    by_cure: dict[str, list[dict]] = {}
    for spec in plan.specs:
        assert spec.sweep_id == plan.sweep_id and spec.extra["cure_of"] == sick["id"]
        by_cure.setdefault(spec.extra["cure"], []).append(spec.config)
    assert set(by_cure) == {c.key for c in design.changes} | {CONTROL}
    for key, configs in by_cure.items():
        assert sorted(c["seed"] for c in configs) == seeds  # every cure on the same seeds
        for variant in configs:
            changed = diff(variant, cfg) - {"seed"}
            if key == CONTROL:
                assert changed == set()  # the control equals the patient except its seed
            else:
                (field,) = changed  # exactly one setting
                change = next(c for c in design.changes if c.key == key)
                assert field == change.field and variant[field] == change.value
    # On the patient's own seed, the control IS the patient's configuration.
    assert cfg in by_cure[CONTROL]
    # Same-shape runs are grouped, so a worker trains them as one batched model.
    assert any(s.group_id for s in plan.specs)
    assert "the patient" in plan.name


def test_cures_map_to_settings_the_run_does_not_already_use() -> None:
    plan, design = plan_cures(*CASES[0])
    assert {(c.key, c.field, c.value) for c in design.changes} == {
        ("relu", "arch", "relu"),
        ("resnet", "arch", "resnet"),
        ("xavier", "init", "xavier"),
        ("lower_lr", "lr", 1e-4),
    }
    assert len(plan.specs) == 5 * 3
    # A resnet with sigmoid blocks keeps its skips: ReLU means ReLU blocks; init is Xavier.
    _, design = plan_cures(*CASES[2])
    assert {(c.field, c.value) for c in design.changes} == {
        ("block_activation", "relu"),
        ("init", "xavier"),
    }
    # SGD with momentum: Adam would be two changes, so it stays text and says why;
    # clipping and leaky ReLU are not run options.
    _, design = plan_cures(*CASES[3])
    assert "optimizer" not in {c.field for c in design.changes}
    whys = {u.cure: u.why for u in design.untested}
    assert "momentum" in whys[dx._ADAM] and dx._CLIP in whys
    # "Xavier/He init" and "He init" for a ReLU net are one change, tried once.
    assert [c.field for c in design.changes].count("init") == 1


def test_every_builtin_cure_text_is_in_the_table() -> None:
    texts = {
        *dx._vanishing_cures("sigmoid"),
        *dx._vanishing_cures("relu"),
        *dx._vanishing_cures("resnet"),
        *dx._DIVERGED_CURES,
        *NOT_LEARNING.cures,
        *DEAD.cures,
    }
    assert texts <= set(CURE_TABLE)


def test_cure_refuses_custom_healthy_and_unfinished_runs() -> None:
    custom = {"id": "c" * 36, "status": "completed", "config": {"user": {}, "model": {}}}
    with pytest.raises(CureRefused, match="code"):
        plan_cures(custom, [VANISHING])
    with pytest.raises(CureRefused, match="nothing to cure"):
        plan_cures(patient(arch="relu"), [finding("healthy", severity="ok")])
    with pytest.raises(CureRefused, match="still running"):
        plan_cures({**patient(), "status": "running"}, [VANISHING])
    only_text = finding("exploding", dx._CLIP)
    with pytest.raises(CureRefused, match="clipping"):
        plan_cures(patient(), [only_text])


def outcome(cure: str, seed: int, acc: float, *kinds: str, status: str = "completed") -> RunOutcome:
    return RunOutcome(f"{cure}{seed}", cure, seed, status, acc, -2.0, frozenset(kinds))


def test_verdict_counts_fixed_seeds_against_the_control_on_the_same_seed() -> None:
    sick = patient(arch="sigmoid")
    findings = [VANISHING, COLLAPSED]
    outcomes = [
        *(outcome(CONTROL, s, 0.5, "vanishing", "collapsed") for s in (0, 1, 2)),
        outcome("relu", 0, 0.97),
        outcome("relu", 1, 0.5 + CURE_MARGIN / 2),  # finding gone, but not better enough
        outcome("relu", 2, 0.9, "vanishing"),  # better, but the finding stayed
        outcome("resnet", 0, 0.96),
        outcome("resnet", 1, math.nan, status="diverged"),
        outcome("resnet", 2, 0.95),
        *(outcome(k, s, 0.5, "collapsed") for k in ("xavier", "lower_lr") for s in (0, 1, 2)),
    ]
    trial = verdict(
        patient_id=sick["id"],
        patient_config=sick["config"],
        findings=findings,
        sweep_id="s",
        sweep_name="cure of x",
        outcomes=outcomes,
    )
    assert trial.done and trial.seeds == (0, 1, 2)
    got = {v.key: v for v in trial.verdicts}
    assert (got["relu"].fixed, got["relu"].gone) == (1, 2)
    assert got["relu"].acc is not None and got["relu"].acc.median == 0.9
    assert got["resnet"].fixed == 2
    assert "1/3 run(s) diverged (seed 1)" in got["resnet"].text()
    assert got["xavier"].fixed == 0 and got["lower_lr"].fixed == 0
    assert got["relu"].text().startswith("ReLU hidden layers (arch=relu): 1/3 seeds fixed")
    assert trial.control_problems == ()
    # A control that diverged is judged as chance: a cure that completes above it fixes it.
    broken = [outcome(CONTROL, 1, math.nan, status="diverged"), *outcomes[0:1], *outcomes[2:]]
    trial = verdict(
        patient_id=sick["id"],
        patient_config=sick["config"],
        findings=findings,
        sweep_id="s",
        sweep_name="cure of x",
        outcomes=broken,
    )
    assert "Control: 1/3 run(s) diverged (seed 1)" in trial.progress_text()
    assert {v.key: v.fixed for v in trial.verdicts}["relu"] == 1
    # Unfinished: no verdict, and it says how far it is.
    running = [*outcomes[:-1], outcome("lower_lr", 2, math.nan, status="running")]
    trial = verdict(
        patient_id=sick["id"],
        patient_config=sick["config"],
        findings=findings,
        sweep_id="s",
        sweep_name="cure of x",
        outcomes=running,
    )
    assert not trial.done and trial.verdicts == ()
    assert "14/15 runs finished" in trial.progress_text()


def invoke(*args: str) -> Any:
    result = runner.invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result


@pytest.mark.slow
def test_cure_trial_end_to_end_verdict_matches_recorded_runs(db_path: Path) -> None:
    from gradscope.runner.worker import WorkerOptions, run_worker

    db = str(db_path)
    small = ["--samples", "512", "--depth", "6", "--width", "16", "--epochs", "4"]
    made = json.loads(
        invoke("train", "--db", db, "--arch", "sigmoid", *small, "--device", "cpu", "--json").stdout
    )
    pid = made["id"]
    queued = json.loads(invoke("cure", pid[:8], "--db", db, "--json").stdout)
    assert queued["patient"] == pid and queued["seeds"] == [0, 1, 2]
    # Before training: the trial says how far it is.
    shown = json.loads(invoke("show", pid, "--db", db, "--json").stdout)
    trials = [f["trial"] for f in shown["diagnosis"] if "trial" in f]
    assert trials and not trials[0]["done"] and trials[0]["runs_finished"] == 0
    assert run_worker(WorkerOptions(db=db, exit_when_idle=True, poll_s=0.05)) == len(queued["runs"])

    engine = make_engine(db)
    # Linked both ways: the patient finds its sweep, every run of the sweep names its patient.
    assert cure_sweep_of(engine, pid) == queued["sweep_id"]
    recorded = trial_frames(engine, pid)
    assert recorded is not None and set(recorded.runs["id"]) == set(queued["runs"])
    swept = {r.id: r for r in list_runs(engine, sweep=queued["sweep_id"])}
    assert set(swept) == set(queued["runs"])

    shown = json.loads(invoke("show", pid, "--db", db, "--json").stdout)
    trials = {f["kind"]: f["trial"] for f in shown["diagnosis"] if "trial" in f}
    assert "vanishing" in trials
    verdicts = {v["cure"]: v for t in trials.values() for v in t["verdicts"]}
    assert set(verdicts) == {c["cure"] for c in queued["cures"]}
    runs = recorded.runs.set_index("id")
    # Every variant's own diagnosis, as `gradscope show` gives it.
    kinds = {}
    for run_id in runs.index:
        doc = json.loads(invoke("show", run_id, "--db", db, "--json").stdout)
        kinds[run_id] = {f["kind"] for f in doc["diagnosis"] if f["severity"] != "ok"}
    control = {
        int(runs.at[i, "seed"]): swept[i].test_acc
        for i in runs.index
        if runs.at[i, "cure"] == CONTROL
    }
    for key, v in verdicts.items():
        ids = [i for i in runs.index if runs.at[i, "cure"] == key]
        accs = [swept[i].test_acc for i in ids]
        assert v["test_acc"]["median"] == pytest.approx(statistics.median(accs))
        assert v["test_acc"]["min"] == pytest.approx(min(accs))
        assert v["test_acc"]["max"] == pytest.approx(max(accs))
        fixed = sum(
            swept[i].status == "completed"
            and not kinds[i] & set(v["for_findings"])
            and swept[i].test_acc >= control[int(runs.at[i, "seed"])] + CURE_MARGIN
            for i in ids
        )
        assert v["seeds_fixed"] == fixed
        assert sorted(v["seeds"]) == [0, 1, 2]
    # The text view prints the same verdict lines.
    text = invoke("show", pid, "--db", db).stdout
    assert "Cure trial" in text and "seeds fixed" in text and "seeds 0, 1, 2" in text


def test_cure_cli_refuses_a_custom_run(db_path: Path) -> None:
    import gradscope

    run = gradscope.init(db=str(db_path), config={"lr": 0.1})
    run.finish()
    result = runner.invoke(app, ["cure", run.id, "--db", str(db_path)])
    said = " ".join(result.output.split())
    assert result.exit_code != 0 and "your own model" in said and "code" in said
