"""A worker that exits when idle first settles the runs it can see are lost (issue 24, item 10):
a run whose process is gone (killed) is queued again and trained from epoch 1, without
duplicated epochs, instead of staying `running` until some later worker starts."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

from gradscope.db.engine import make_engine
from gradscope.db.epoch_writes import EpochWriter
from gradscope.db.lifecycle import claim_next
from gradscope.db.queries import get_run
from gradscope.runner.worker import WorkerOptions, process_gone, run_worker
from gradscope.vocab.config import make_config
from gradscope.vocab.records import EpochRecord, RunSpec

CONFIG = {"arch": "relu", "depth": 2, "width": 4, "samples": 256, "epochs": 3, "seed": 1}


def dead_worker_name() -> str:
    """The runs.worker name of a process on this machine that has exited (and was reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    return f"{socket.gethostname()}:{done.stdout.strip()}"


def test_process_gone_knows_only_this_machines_processes() -> None:
    name = dead_worker_name()
    assert process_gone(name) and process_gone(f"{name} (gradscope.init)")
    assert not process_gone(f"{socket.gethostname()}:{__import__('os').getpid()}")
    assert not process_gone(f"{socket.gethostname()}:1")  # init: alive
    assert not process_gone(f"other-host-{name}")


def test_an_idle_exiting_worker_retrains_a_run_whose_process_died(db_path: Path) -> None:
    engine = make_engine(str(db_path))
    run_id = EpochWriter(engine).create_run(RunSpec(make_config(CONFIG).model_dump()))
    dead = dead_worker_name()
    assert list(claim_next(engine, dead).run_ids) == [run_id]
    # The killed worker had recorded an epoch; its heartbeat is fresh (not stale yet).
    EpochWriter(engine, worker=dead).record_epoch(
        run_id, EpochRecord(1, {"train_loss": 9.0, "seconds": 0.1}, [])
    )
    handled = run_worker(WorkerOptions(db=str(db_path), exit_when_idle=True, poll_s=0.05))
    assert handled == 1
    run = get_run(engine, run_id)
    assert (run.status, run.epochs_done) == ("completed", 3)
    with sqlite3.connect(db_path) as conn:
        rows = conn.execute(
            "SELECT epoch, train_loss FROM epoch_metrics WHERE run_id = ? ORDER BY epoch",
            (run_id,),
        ).fetchall()
    assert [e for e, _ in rows] == [1, 2, 3]  # retrained from epoch 1, none twice
    assert 9.0 not in [loss for _, loss in rows]
    engine.dispose()


def test_an_idle_exiting_worker_leaves_live_and_remote_runs_alone(db_path: Path) -> None:
    engine = make_engine(str(db_path))
    ids = EpochWriter(engine).create_runs([RunSpec(make_config(CONFIG).model_dump())] * 2)
    claim_next(engine, f"{socket.gethostname()}:1")  # a live process here
    claim_next(engine, "elsewhere:12345")  # another machine: only staleness tells
    assert run_worker(WorkerOptions(db=str(db_path), exit_when_idle=True, poll_s=0.05)) == 0
    assert [get_run(engine, i).status for i in ids] == ["running", "running"]
    engine.dispose()
