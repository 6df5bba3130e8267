"""The background worker as real processes on a real SQLite file: many workers, crashes,
cancel, SIGTERM, failing runs. No sleeps: every wait polls a condition with a deadline."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner
from worker_helpers import (
    ENDLESS,
    SMALL,
    WorkerProcess,
    drain_concurrently,
    epoch_rows,
    queue_runs,
    wait_for,
)

import gradscope.runner.worker as worker_module
from gradscope.cli import app
from gradscope.db.lifecycle import db_now, queue_sweep, recover_lost
from gradscope.db.queries import get_run, run_document
from gradscope.runner.worker import (
    RunBudget,
    WorkerOptions,
    run_slot,
    spawn_worker_process,
    stop_worker_process,
)
from gradscope.vocab.sweep import plan_sweep

pytestmark = pytest.mark.slow


def test_four_worker_processes_share_one_sqlite_file(db_path: Path, sqlite_engine: Engine) -> None:
    # Two independent workers with two training processes each: four processes claiming from
    # one file, both ways of running several (several machines, --concurrency).
    workers = [
        WorkerProcess(str(db_path), "--concurrency", "2", "--poll", "0.05") for _ in range(2)
    ]
    drain_concurrently(str(db_path), sqlite_engine, workers, processes=4, runs=20)


def test_killed_worker_is_noticed_and_its_epochs_kept(db_path: Path, sqlite_engine: Engine) -> None:
    [run_id] = queue_runs(sqlite_engine, 1, **ENDLESS)
    first = WorkerProcess(str(db_path), "--exit-when-idle", "--heartbeat", "0.2")
    wait_for(lambda: get_run(sqlite_engine, run_id).epochs_done >= 2, what="two epochs recorded")
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    at_kill = run_document(sqlite_engine, run_id)
    assert at_kill["status"] == "running"

    # Not stale yet by the database clock, nor 30 s later: nobody may take it.
    assert recover_lost(sqlite_engine, 60) == {}
    later = db_now(sqlite_engine) + timedelta(seconds=30)
    assert recover_lost(sqlite_engine, 60, now=later) == {}

    # A new worker checks for lost runs as it starts (with --stale-after 0 any old heartbeat
    # counts as lost, so no waiting is needed). --retries 0: fail it, don't train it again.
    second = WorkerProcess(str(db_path), "--exit-when-idle", "--stale-after", "0", "--retries", "0")
    assert second.wait() == 0, second.output
    assert f"marked run {run_id} failed: worker lost" in second.output

    after = run_document(sqlite_engine, run_id)
    assert after["status"] == "failed"
    assert after["error"] == "worker lost"
    assert after["epochs"] == at_kill["epochs"]
    assert after["layer_stats"] == at_kill["layer_stats"]
    assert after["epochs_done"] == len(after["epochs"]) >= 2
    with sqlite3.connect(db_path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_cancel_a_failing_run_and_sigterm_in_one_worker_session(
    db_path: Path, sqlite_engine: Engine, tmp_path: Path
) -> None:
    """One worker with two training processes (one start-up paid for several checks), started
    and stopped the way the dashboard does: stop_worker_process sends SIGTERM."""
    cli = CliRunner()
    db = str(db_path)
    first, second = queue_runs(sqlite_engine, 2, **ENDLESS)
    log = tmp_path / "worker.log"
    worker = spawn_worker_process(db, concurrency=2, heartbeat_s=0.2, log_path=log)
    try:
        wait_for(
            lambda: all(get_run(sqlite_engine, i).epochs_done >= 1 for i in (first, second)),
            what="both runs training",
        )
        # Both processes are busy, so these wait in the queue.
        [waiting] = queue_runs(sqlite_engine, 1, **ENDLESS)
        csv = tmp_path / "points.csv"
        csv.write_text("x1,x2,label\n" + "".join(f"{i},{-i},{i % 2}\n" for i in range(40)))
        submitted = cli.invoke(app, ["submit", "--db", db, "--dataset", f"csv:{csv}"])
        assert submitted.exit_code == 0, submitted.output
        csv_run = submitted.output.strip()
        csv.unlink()  # the data vanishes after the run was queued
        [last] = queue_runs(sqlite_engine, 1)

        result = cli.invoke(app, ["cancel", "--db", db, waiting[:8]])
        assert result.exit_code == 0, result.output
        assert f"{waiting}  cancelled" in result.output
        cancelled_at_once = get_run(sqlite_engine, waiting)
        assert (cancelled_at_once.status, cancelled_at_once.started_at) == ("cancelled", None)

        result = cli.invoke(app, ["cancel", "--db", db, first])
        assert f"{first}  cancel requested" in result.output
        # The freed process takes the failing run and goes on with the next one.
        wait_for(
            lambda: (
                (get_run(sqlite_engine, csv_run).status, get_run(sqlite_engine, last).status)
                == ("failed", "completed")
            ),
            what="the failing run and the last run",
        )
        assert worker.poll() is None
        assert get_run(sqlite_engine, second).status == "running"
    finally:
        code = stop_worker_process(worker, timeout_s=15)
    output = log.read_text()
    assert code == 0, output

    cancelled = run_document(sqlite_engine, first)
    assert cancelled["status"] == "cancelled"
    assert len(cancelled["epochs"]) == cancelled["epochs_done"] >= 1
    assert get_run(sqlite_engine, waiting).epochs_done == 0
    failed = get_run(sqlite_engine, csv_run)
    assert failed.status == "failed"
    assert "CSV file not found" in (failed.error or "")
    interrupted = run_document(sqlite_engine, second)  # SIGTERM stopped the run still training
    assert interrupted["status"] == "interrupted"
    assert len(interrupted["epochs"]) == interrupted["epochs_done"] >= 1
    assert f"run {second} interrupted" in output

    again = cli.invoke(app, ["cancel", "--db", db, last])
    assert "not cancelled: already completed" in again.output
    unknown = cli.invoke(app, ["cancel", "--db", db, last, "ffffffff-0000"])
    assert unknown.exit_code != 0
    assert "no run with id" in unknown.output


def queue_group(engine: Engine, size: int) -> list[str]:
    plan = plan_sweep({**{k: str(v) for k, v in SMALL.items()}, "seed": "0,1,2"}, batch=True)
    assert len({s.group_id for s in plan.specs}) == 1 and plan.size == size
    return queue_sweep(engine, plan)


@pytest.mark.parametrize("batched", [True, False], ids=["execute_group", "one-by-one"])
def test_a_group_is_trained_by_one_worker(
    db_path: Path, sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch, batched: bool
) -> None:
    ids = queue_group(sqlite_engine, 3)
    if not batched:  # as if gradscope.runner.batched were not installed: the members train in turn
        monkeypatch.setattr(worker_module, "_load_execute_group", lambda: None)
    opts = WorkerOptions(db=str(db_path), exit_when_idle=True, poll_s=0.05)
    assert run_slot(opts, RunBudget(None, multiprocessing.Value("i", 0))) == 3
    for run_id in ids:
        run = get_run(sqlite_engine, run_id)
        assert (run.status, run.epochs_done) == ("completed", 2)
        assert epoch_rows(sqlite_engine, run_id) == [1, 2]
    assert len({get_run(sqlite_engine, i).worker for i in ids}) == 1


def test_max_runs_stops_the_worker(db_path: Path, sqlite_engine: Engine) -> None:
    ids = queue_runs(sqlite_engine, 3)
    opts = WorkerOptions(db=str(db_path), max_runs=2, poll_s=0.05)
    assert run_slot(opts, RunBudget(2, multiprocessing.Value("i", 0))) == 2
    assert sorted(get_run(sqlite_engine, i).status for i in ids) == [
        "completed",
        "completed",
        "queued",
    ]
