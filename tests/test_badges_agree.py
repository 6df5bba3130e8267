"""Badges and diagnosis agree, from one source (issue 21, item 4): a gradient spike inside a
middle epoch (its end-of-run statistics normal) reaches the runs table's badge through the
run's peak gradient (runs.peak_grad, kept as epochs are written), the number diagnose() reads
from all of the run's layers; written one run at a time or for a batched group, imported
from a shared file (recomputed, never the file's word), and filled in by the 0004 migration."""

from __future__ import annotations

import json
import math
import sqlite3
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from gradscope.analysis.badges import badges
from gradscope.analysis.diagnosis import HUGE_GRAD, badge, peak_gradient
from gradscope.cli import app
from gradscope.cli.run_view import frames as doc_frames
from gradscope.cli.run_view import run_diagnosis
from gradscope.db import frames
from gradscope.db.engine import make_engine
from gradscope.db.epoch_writes import EpochWriter
from gradscope.db.migrate import upgrade
from gradscope.db.queries import resolve_run_id, run_document
from gradscope.db.share.export import export_runs
from gradscope.db.share.importing import import_file
from gradscope.vocab.config import make_config
from gradscope.vocab.records import EpochRecord, FinalMetrics, LayerInfo, RunSpec

runner = CliRunner()
EPOCHS, LAYERS = 3, 3


def _stats(max_abs: float) -> list[dict]:
    """One epoch's layers: normal mean norms; layer 1's largest |g| over the epoch's steps is
    `max_abs` (a spike inside the epoch that its mean norm does not show)."""
    return [
        {
            "grad_norm": 0.1,
            "grad_mean_abs": 0.01,
            "grad_std": 0.01,
            "grad_max_abs": max_abs if layer == 1 else 0.1,
            "weight_norm": 1.0,
            "update_ratio": 1e-3,
            "act_mean": 0.3,
            "act_std": 0.2,
            "saturated_frac": math.nan,
            "dead_frac": 0.0,
        }
        for layer in range(LAYERS)
    ]


def _records(spike: float) -> list[EpochRecord]:
    metrics = {"train_loss": 0.3, "test_loss": 0.3, "test_acc": 0.9, "pred_std": 0.2}
    return [EpochRecord(e, metrics, _stats(spike if e == 2 else 0.2)) for e in range(1, EPOCHS + 1)]


def _new_run(store: EpochWriter, seed: int) -> str:
    cfg = make_config({"arch": "relu", "depth": LAYERS - 1, "width": 4, "epochs": EPOCHS})
    run_id = store.create_run(RunSpec({**cfg.model_dump(), "seed": seed}), status="running")
    infos = [LayerInfo(i, f"linears.{i}", "hidden", "relu", 4, 4, 20) for i in range(LAYERS)]
    store.record_layers(run_id, infos)
    return run_id


def _finish(store: EpochWriter, run_id: str) -> None:
    store.finish_run(run_id, "completed", final=FinalMetrics(test_acc=0.9, pred_std=0.2))


@pytest.fixture
def spiked(database: str) -> tuple[str, dict[str, str]]:
    """Runs with a 5e4 spike inside epoch 2 only and a control without it, written one at a
    time (record_epoch) and as a batched group (record_epochs), in SQLite and PostgreSQL."""
    db = database
    engine = make_engine(db)
    store = EpochWriter(engine)
    ids = {"solo spike": _new_run(store, 0), "solo calm": _new_run(store, 1)}
    for name, spike in (("solo spike", 5e4), ("solo calm", 0.2)):
        for record in _records(spike):
            store.record_epoch(ids[name], record)
        _finish(store, ids[name])
    ids |= {"group spike": _new_run(store, 2), "group calm": _new_run(store, 3)}
    spiky, calm = _records(5e4), _records(0.2)
    for e in range(EPOCHS):
        store.record_epochs([(ids["group spike"], spiky[e]), (ids["group calm"], calm[e])])
    _finish(store, ids["group spike"])
    _finish(store, ids["group calm"])
    engine.dispose()
    return db, ids


def _verdicts(db: str, ids: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """Per run: the badge of the runs table (first/last epochs + peak) and badge(diagnose())
    of `gradscope show` (every epoch)."""
    engine = make_engine(str(db))
    ends = frames.run_ends(engine)
    fast = badges(
        frames.runs(engine), ends.layers, ends.epochs, ends.warnings, ends.facts, ends.peaks
    )
    full = {
        name: badge(run_diagnosis(run_document(engine, resolve_run_id(engine, run_id))))
        for name, run_id in ids.items()
    }
    engine.dispose()
    return {name: fast[run_id] for name, run_id in ids.items()}, full


def test_a_spike_inside_a_middle_epoch_gets_one_verdict_from_badge_and_diagnosis(
    spiked: tuple[str, dict[str, str]],
) -> None:
    db, ids = spiked
    fast, full = _verdicts(db, ids)
    assert fast == full
    assert fast["solo spike"] == fast["group spike"] == "exploding"
    assert fast["solo calm"] == fast["group calm"] == "healthy"
    # The stored peak is the number diagnose() reads from all the run's layers.
    engine = make_engine(str(db))
    ends = frames.run_ends(engine)
    for name, run_id in ids.items():
        epochs, layers = doc_frames(run_document(engine, run_id))
        assert ends.peaks[run_id] == peak_gradient(layers), name
    assert ends.peaks[ids["solo spike"]] == 5e4 > HUGE_GRAD
    engine.dispose()
    # Without the peak (a reader that ignored it), the first/last epochs alone miss the spike.
    engine = make_engine(str(db))
    ends = frames.run_ends(engine)
    blind = badges(frames.runs(engine), ends.layers, ends.epochs, ends.warnings, ends.facts)
    engine.dispose()
    assert blind[ids["solo spike"]] == "healthy"
    # `gradscope runs` lists the same label.
    listed = json.loads(runner.invoke(app, ["runs", "--db", str(db), "--json"]).stdout)
    assert {r["id"]: r["diagnosis"] for r in listed}[ids["solo spike"]] == "exploding"


def test_an_imported_run_gets_its_peak_from_its_rows_not_from_the_file(
    spiked: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    db, ids = spiked
    home = make_engine(str(db))
    out = tmp_path / "shared.db"
    export_runs(home, [ids["solo spike"], ids["solo calm"]], out)
    home.dispose()
    # A hostile (or mistaken) file: the calm run claims a huge peak, the spiked one none.
    with sqlite3.connect(out) as conn:
        conn.execute("UPDATE runs SET peak_grad = 1e9 WHERE id = ?", (ids["solo calm"],))
        conn.execute("UPDATE runs SET peak_grad = NULL WHERE id = ?", (ids["solo spike"],))
    away = make_engine(str(tmp_path / "away.db"))
    assert len(import_file(away, out).added) == 2
    ends = frames.run_ends(away)
    away.dispose()
    assert ends.peaks[ids["solo spike"]] == 5e4
    assert ends.peaks[ids["solo calm"]] == pytest.approx(0.2)


def test_migration_0004_fills_peaks_and_clears_the_seed_of_unseeded_api_runs(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = sa.create_engine(url)
    upgrade(engine, "0003_metrics_warnings")
    columns = (
        "id, status, config, arch, dataset, depth, width, seed, created_at, epochs_total, "
        "epochs_done, cancel_requested, attempts"
    )
    rows = [  # id, config, arch, seed
        ("a" * 36, {"user": {"lr": 0.1}, "model": {}}, "custom", 0),
        ("b" * 36, {"user": {"seed": 0}, "model": {}}, "custom", 0),
        ("c" * 36, {"user": {"seed": 5}, "model": {}}, "custom", 5),
        ("d" * 36, {"arch": "relu"}, "relu", 0),
    ]
    with engine.begin() as conn:
        for run_id, config, arch, seed in rows:
            conn.execute(
                sa.text(
                    f"INSERT INTO runs ({columns}) VALUES (:id, 'completed', :config, :arch, "
                    "'moons', 2, 4, :seed, '2026-12-06 12:00:00', 3, 3, 0, 0)"
                ),
                {"id": run_id, "config": json.dumps(config), "arch": arch, "seed": seed},
            )
        for epoch, (norm, max_abs, finite) in enumerate(
            [(0.1, 0.2, None), (0.1, 7e4, None), (0.2, 0.3, float("inf"))], start=1
        ):
            conn.execute(
                sa.text(
                    "INSERT INTO layer_stats (run_id, epoch, layer, grad_norm, grad_max_abs, "
                    "finite_max_abs) VALUES (:r, :e, 0, :n, :m, :f)"
                ),
                {"r": "a" * 36, "e": epoch, "n": norm, "m": max_abs, "f": finite},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO layer_stats (run_id, epoch, layer, grad_norm, grad_max_abs) "
                    "VALUES (:r, :e, 0, :n, -3.0)"
                ),
                {"r": "d" * 36, "e": epoch, "n": norm},
            )
    engine.dispose()
    # Through gradscope's own engine (foreign keys on, as `gradscope db upgrade` opens it): the
    # runs table is copied, and no child row may go with the old one.
    engine = make_engine(url, check_schema=False)
    assert upgrade(engine) == ("0003_metrics_warnings", "0004_seed_optional_peak_grad")
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM layer_stats")).scalar() == 6
        found = dict(conn.execute(sa.text("SELECT id, seed FROM runs")).all())
        peaks = dict(conn.execute(sa.text("SELECT id, peak_grad FROM runs")).all())
        # The runs table was copied (SQLite batch mode): its status check must survive.
        with pytest.raises(sa.exc.IntegrityError):
            conn.execute(sa.text("UPDATE runs SET status = 'bogus' WHERE id = :i"), {"i": "d" * 36})
    engine.dispose()
    assert found == {"a" * 36: None, "b" * 36: 0, "c" * 36: 5, "d" * 36: 0}
    assert peaks["a" * 36] == math.inf and peaks["d" * 36] == 3.0
    assert peaks["b" * 36] is None and peaks["c" * 36] is None
