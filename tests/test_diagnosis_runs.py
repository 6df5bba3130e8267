"""The diagnosis of real (tiny) training runs: each rule fires where it must and stays quiet where
it must not, the moment of divergence is recorded (solo and batched), the runs table's badges
agree with the full diagnosis, and the terminal shows it all.

Every run is trained once, through the foreground path into one SQLite file (a mixed database);
each takes well under a second except the explosion (~1 s of resnet-20 steps).
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from reference_loop import train
from sqlalchemy import Engine
from typer.testing import CliRunner

from gradscope.analysis.badges import badges
from gradscope.analysis.diagnosis import Finding, badge
from gradscope.cli.main import app
from gradscope.cli.run_view import run_diagnosis
from gradscope.db import frames
from gradscope.db.engine import make_engine
from gradscope.db.queries import run_document
from gradscope.runner.batched import train_group
from gradscope.runner.foreground import train_foreground
from gradscope.runner.gradient_stats import EpochGradStats
from gradscope.vocab.config import make_config
from gradscope.vocab.records import EpochRecord

DATA = Path(__file__).parent / "data"
cli = CliRunner()

TINY = {"samples": "256", "width": "16", "device": "cpu"}
RUNS: dict[str, dict[str, str]] = {
    # resnet-20, SGD 0.1: max |g| ~29 at step 1 grows to ~1e12 by step 3, NaN at step 4.
    "exploding": {"arch": "resnet", "depth": "20", "width": "32", "optimizer": "sgd",
                  "lr": "0.1", "samples": "1024", "epochs": "1"},
    "healthy": {"arch": "relu", "depth": "3", "lr": "0.01", "epochs": "3"},
    # Adam rescues a depth-5 sigmoid net: 10^-3.7 at epoch 1, 10^-0.9 by the end, acc ~0.83.
    "recovered": {"arch": "sigmoid", "depth": "5", "optimizer": "adam", "lr": "0.01",
                  "epochs": "8", "samples": "512", "width": "32"},
    "vanishing": {"arch": "sigmoid", "depth": "10", "epochs": "2", "width": "32"},
    "deep_sigmoid": {"arch": "sigmoid", "depth": "30", "epochs": "1", "width": "32"},
    "chance": {"arch": "sigmoid", "depth": "2", "optimizer": "sgd", "lr": "0.1", "epochs": "3"},
    "saturated": {"arch": "sigmoid", "depth": "3", "optimizer": "sgd", "lr": "30",
                  "epochs": "2"},
    "dead": {"arch": "relu", "depth": "3", "optimizer": "sgd", "lr": "3", "epochs": "2",
             "width": "32"},
}  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, dict[str, str]]:
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("diag") / "runs.db"
    engine = make_engine(f"sqlite:///{path}", create=True)
    ids = {}
    for name, values in RUNS.items():
        ids[name], _ = train_foreground(engine, {**TINY, **values, "name": name}, progress=False)
    return engine, ids


def findings(trained: tuple[Engine, dict[str, str]], name: str) -> list[Finding]:
    engine, ids = trained
    return run_diagnosis(run_document(engine, ids[name]))


def kinds(found: list[Finding]) -> dict[str, Finding]:
    return {f.kind: f for f in found}


# -- item 1 and the exploding rule --------------------------------------------------------------


def test_an_explosion_inside_epoch_1_is_recorded_and_named(trained) -> None:  # noqa: ANN001
    engine, ids = trained
    doc = run_document(engine, ids["exploding"])
    assert doc["status"] == "diverged"
    assert doc["epochs"][0]["first_nonfinite_step"] == 4
    stats = [s for s in doc["layer_stats"] if s["epoch"] == 1]
    assert all(s["grad_norm"] is None for s in stats)  # the epoch's statistics are NaN
    peaks = [s["finite_max_abs"] for s in stats]
    starts = [s["finite_first_max_abs"] for s in stats]
    assert all(p is not None and math.isfinite(p) for p in peaks)
    assert all(s["finite_last_norm"] is not None for s in stats)
    assert max(starts) < 1e3 < 1e4 < max(peaks)
    found = kinds(findings(trained, "exploding"))
    boom = found["exploding"]
    assert boom.severity == "bad"
    assert boom.evidence["first_nonfinite_step"] == 4
    assert boom.evidence["max_abs_grad"] == pytest.approx(max(peaks))
    assert boom.evidence["max_abs_grad_first_step"] == pytest.approx(max(starts))
    assert "within 3 step(s) of epoch 1" in boom.detail and "step 4" in boom.detail
    assert found["diverged"].evidence["first_nonfinite_step"] == 4


def test_a_finite_run_records_no_divergence_and_is_not_exploding(trained) -> None:  # noqa: ANN001
    engine, ids = trained
    doc = run_document(engine, ids["healthy"])
    assert all(e["first_nonfinite_step"] is None for e in doc["epochs"])
    assert all(s["finite_max_abs"] is None for s in doc["layer_stats"])
    found = findings(trained, "healthy")
    assert [f.kind for f in found] == ["healthy"]


# -- vanishing ----------------------------------------------------------------------------------


def test_a_vanishing_that_recovered_in_a_run_that_learned_is_only_a_warning(trained) -> None:  # noqa: ANN001
    found = kinds(findings(trained, "recovered"))
    van = found["vanishing"]
    assert van.severity == "warn"
    assert van.evidence["ratio_log10_first"] <= -3 < van.evidence["ratio_log10_last"]
    assert 1 < van.evidence["recovered_epoch"] <= 8
    assert f"recovered by epoch {van.evidence['recovered_epoch']}" in van.detail
    assert van.evidence["test_acc"] > 0.7
    assert not any(f.severity == "bad" for f in found.values())
    assert badge(list(found.values())) == "vanished early"


def test_a_vanishing_that_stays_is_bad(trained) -> None:  # noqa: ANN001
    van = kinds(findings(trained, "vanishing"))["vanishing"]
    assert van.severity == "bad"
    assert van.evidence["ratio_log10_last"] <= -3
    assert "still barely learn" in van.detail


# -- contraction --------------------------------------------------------------------------------


def test_depth_30_sigmoid_contraction_is_measured_above_the_noise_floor(trained) -> None:  # noqa: ANN001
    found = kinds(findings(trained, "deep_sigmoid"))
    van = found["vanishing"]
    assert 5.5 <= van.evidence["contraction_per_layer"] <= 9
    assert van.evidence["act_std_floor"] == pytest.approx(1e-6)
    assert van.evidence["saturated_frac"] <= 0.1
    assert "contracts rather than saturates" in van.detail
    assert "saturated" not in found  # no saturation claim without saturated units


def test_no_contraction_claim_for_a_healthy_net_and_saturation_where_it_is(trained) -> None:  # noqa: ANN001
    assert all("contraction_per_layer" not in f.evidence for f in findings(trained, "healthy"))
    sat = kinds(findings(trained, "saturated"))
    assert sat["saturated"].evidence["saturated_frac"] > 0.5
    assert all("contracts rather than" not in f.detail for f in sat.values())


# -- chance, collapse, dead ---------------------------------------------------------------------


def test_a_run_at_chance_is_never_healthy(trained) -> None:  # noqa: ANN001
    found = kinds(findings(trained, "chance"))
    assert "healthy" not in found
    assert abs(found["not_learning"].evidence["test_acc"] - 0.5) <= 0.05
    assert found["not_learning"].severity == "bad"
    # Where something else explains it (a collapsed output), not_learning is not added.
    collapsed = kinds(findings(trained, "vanishing"))
    assert "collapsed" in collapsed and "not_learning" not in collapsed


def test_dead_units_fire_only_where_relu_units_died(trained) -> None:  # noqa: ANN001
    assert kinds(findings(trained, "dead"))["dead"].evidence["dead_frac"] > 0.5
    assert "dead" not in kinds(findings(trained, "healthy"))
    assert "collapsed" not in kinds(findings(trained, "recovered"))


def test_badges_agree_with_the_full_diagnosis_on_every_real_run(trained) -> None:  # noqa: ANN001
    engine, ids = trained
    runs = frames.runs(engine)
    ends = frames.run_ends(engine)
    fast = badges(runs, ends.layers, ends.epochs)
    for name, run_id in ids.items():
        assert fast[run_id] == badge(findings(trained, name)), name
    assert set(fast) >= {"diverged", "vanished early", "not learning", "dead", "vanishing"}


# -- batched members ----------------------------------------------------------------------------


class Keep:
    def __init__(self) -> None:
        self.records: list[EpochRecord] = []

    def start(self, layers, points, device) -> None:  # noqa: ANN001
        pass

    def epoch(self, record: EpochRecord) -> bool:
        self.records.append(record)
        return False


def test_batched_members_record_the_moment_of_divergence_as_solo_runs_do() -> None:
    torch.set_num_threads(1)
    base = {"arch": "resnet", "depth": 20, "width": 32, "optimizer": "sgd", "samples": 1024}
    wild = make_config({**base, "lr": 0.1, "epochs": 1})
    calm = make_config({**base, "lr": 0.001, "epochs": 1})
    recs = [Keep(), Keep()]
    results = train_group([wild, calm], recs)
    assert [r.status for r in results] == ["diverged", "completed"]
    solo = Keep()
    train(wild, solo)
    got, want = recs[0].records[0], solo.records[0]
    assert got.metrics["first_nonfinite_step"] == want.metrics["first_nonfinite_step"] == 4
    for g, w in zip(got.layer_stats, want.layer_stats, strict=True):
        for key in ("finite_first_max_abs", "finite_max_abs", "finite_last_norm"):
            assert g[key] == pytest.approx(w[key], rel=1e-2), key
    assert "first_nonfinite_step" not in recs[1].records[0].metrics
    assert all(s["finite_max_abs"] is None for s in recs[1].records[0].layer_stats)


@pytest.mark.parametrize("path", ["cpu", "device"])
@pytest.mark.parametrize("bad", [19, 17, 33])
def test_the_moment_is_tracked_across_blocks_per_member_without_host_copies(
    bad: int, path: str
) -> None:
    # 2 members, 3 layers, 40 steps (blocks of 16): member 1 turns NaN at step `bad`, inside a
    # block (19) or at a block's first step (17, 33: the moment's last finite norm is then the
    # previous block's last step). On a CPU finite blocks skip the bookkeeping; "device" runs
    # the path other devices take (every block tracked on the device, no host check).
    probe = EpochGradStats([4, 4, 6], 2, torch.device("cpu"))
    weights = torch.ones(14 * 2)
    probe.begin(weights)
    if path == "device":
        probe._sums.clean = False  # as begin() leaves it on a non-CPU device
    gen = torch.Generator().manual_seed(0)
    steps = [torch.randn(28, generator=gen) * (s + 1) for s in range(40)]
    steps[bad - 1] = steps[bad - 1].clone()
    steps[bad - 1][8 + 4 + 1] = math.nan  # layer 1 (offset 4 x 2 members), member 1
    for g in steps:
        probe.step(g)
    stats = probe.finish(weights)
    assert stats["first_nonfinite_step"][0].tolist() == [0.0, float(bad)]

    def layer_member(g: torch.Tensor, layer: int, k: int) -> torch.Tensor:
        start = [0, 8, 16][layer]
        n = [4, 4, 6][layer]
        return g[start + k * n : start + (k + 1) * n]

    for layer in range(3):
        first = layer_member(steps[0], layer, 1).abs().max()
        peak = max(layer_member(g, layer, 1).abs().max() for g in steps[: bad - 1])
        last = layer_member(steps[bad - 2], layer, 1).norm()
        assert stats["finite_first_max_abs"][layer, 1] == pytest.approx(float(first))
        assert stats["finite_max_abs"][layer, 1] == pytest.approx(float(peak))
        assert stats["finite_last_norm"][layer, 1] == pytest.approx(float(last))
        # Member 0 stayed finite: its moment is its whole epoch.
        assert stats["finite_max_abs"][layer, 0] == pytest.approx(
            float(max(layer_member(g, layer, 0).abs().max() for g in steps))
        )
        assert stats["finite_last_norm"][layer, 0] == pytest.approx(
            float(layer_member(steps[-1], layer, 0).norm())
        )


# -- the terminal -------------------------------------------------------------------------------


def test_show_prints_diagnosis_and_layers_and_json_has_it(trained) -> None:  # noqa: ANN001
    engine, ids = trained
    db = str(engine.url.database)
    shown = cli.invoke(app, ["show", ids["vanishing"], "--db", db], env={"COLUMNS": "80"})
    assert shown.exit_code == 0, shown.output
    out = shown.stdout
    assert "Diagnosis" in out and "[bad] Vanishing gradients" in out
    assert "Layers at epoch 2" in out and "█" in out and "log scale" in out
    assert "e-0" in out  # scientific notation for values spanning decades
    assert max(len(line) for line in out.splitlines()) <= 80
    early = cli.invoke(app, ["show", ids["vanishing"], "--db", db, "--epoch", "1"])
    assert "Layers at epoch 1" in early.stdout
    missing = cli.invoke(app, ["show", ids["vanishing"], "--db", db, "--epoch", "9"])
    assert missing.exit_code == 2 and "--epoch 9" in missing.output
    doc = json.loads(cli.invoke(app, ["show", ids["exploding"], "--db", db, "--json"]).stdout)
    assert {f["kind"] for f in doc["diagnosis"]} == {"diverged", "exploding"}
    boom = next(f for f in doc["diagnosis"] if f["kind"] == "exploding")
    assert set(boom) == {"kind", "severity", "title", "detail", "cures", "evidence"}
    assert boom["evidence"]["first_nonfinite_step"] == 4


def test_runs_has_a_diagnosis_column_filters_and_fits_80_columns(trained) -> None:  # noqa: ANN001
    engine, ids = trained
    db = str(engine.url.database)
    listed = cli.invoke(app, ["runs", "--db", db], env={"COLUMNS": "80"})
    assert listed.exit_code == 0, listed.output
    lines = listed.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert "diagnosis" in lines[2] and "vanished early" in listed.stdout
    rows = json.loads(cli.invoke(app, ["runs", "--db", db, "--json", "--arch", "relu"]).stdout)
    assert {r["name"] for r in rows} == {"healthy", "dead"}
    assert {r["diagnosis"] for r in rows} == {"healthy", "dead"}
    named = json.loads(cli.invoke(app, ["runs", "--db", db, "--json", "--name", "SATUR"]).stdout)
    assert [r["name"] for r in named] == ["saturated"]
    # A sweep the database does not hold is refused by name, as a mistyped --status is.
    none = cli.invoke(app, ["runs", "--db", db, "--json", "--sweep", "nope"])
    assert none.exit_code == 2 and "no sweep 'nope'" in none.output


def test_train_prints_only_the_id_on_stdout_and_a_failure_explains_itself(
    tmp_path: Path,
) -> None:
    db = str(tmp_path / "t.db")
    ok = cli.invoke(app, ["train", "--db", db, "--epochs", "1", "--samples", "128", "--depth", "2"])
    assert ok.exit_code == 0, ok.output
    assert len(ok.stdout.split()) == 1 and len(ok.stdout.strip()) == 36
    assert "completed" in ok.stderr
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("x,y,label\n1,2,0\n")  # too few rows: fails while loading
    failed = cli.invoke(app, ["train", "--db", db, "--epochs", "1", "--dataset", f"csv:{bad_csv}"])
    assert failed.exit_code == 1
    assert "failed: " in failed.stderr and "data rows" in failed.stderr


# -- older databases ----------------------------------------------------------------------------


@pytest.mark.slow  # `gradscope db upgrade` in a subprocess, as a user runs it
def test_a_schema_0001_database_upgrades_and_its_runs_read_without_the_moment(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    shutil.copy(DATA / "schema_0001.db", path)
    done = subprocess.run(
        [sys.executable, "-m", "gradscope.cli", "db", "upgrade", "--db", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    listed = json.loads(cli.invoke(app, ["runs", "--db", str(path), "--json"]).stdout)
    assert len(listed) == 5
    by_status: dict[str, Any] = {r["status"]: r for r in listed}
    assert by_status["queued"]["diagnosis"] is None  # nothing recorded yet
    for run in listed:
        shown = cli.invoke(app, ["show", run["id"], "--db", str(path), "--json"])
        assert shown.exit_code == 0, shown.output
        doc = json.loads(shown.stdout)
        assert doc["diagnosis"], run["id"]
        assert all(e["first_nonfinite_step"] is None for e in doc["epochs"])
        assert all(s["finite_max_abs"] is None for s in doc["layer_stats"])
        table = cli.invoke(app, ["show", run["id"], "--db", str(path)])
        assert table.exit_code == 0 and "Diagnosis" in table.stdout
    diverged = json.loads(
        cli.invoke(app, ["show", by_status["diverged"]["id"], "--db", str(path), "--json"]).stdout
    )
    assert diverged["diagnosis"][0]["kind"] == "diverged"
    assert "first_nonfinite_step" not in diverged["diagnosis"][0]["evidence"]
    # The frames the dashboard reads carry the new columns as NaN.
    engine = make_engine(f"sqlite:///{path}")
    labels = {r["id"]: r["id"][:8] for r in listed}
    assert frames.epochs(engine, labels)["first_nonfinite_step"].isna().all()
    assert pd.isna(frames.layer_stats(engine, labels)["finite_max_abs"]).all()
