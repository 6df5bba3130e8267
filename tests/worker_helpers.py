"""Helpers for the queue tests: queue small runs, start real `gradscope worker` processes, poll
conditions with a deadline (never sleep as synchronisation)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Engine, func, select

from gradscope.db.engine import make_engine
from gradscope.db.epoch_writes import EpochWriter
from gradscope.db.models import EpochMetricModel
from gradscope.db.queries import list_runs
from gradscope.db.transactions import orm, transaction
from gradscope.vocab.config import make_config
from gradscope.vocab.records import RunSpec

T = TypeVar("T")

# Small but real runs: a few milliseconds per epoch once torch is loaded.
SMALL = {"depth": 2, "width": 8, "samples": 256, "epochs": 2, "device": "cpu"}
# Runs that would train for hours: tests stop them (cancel, SIGTERM, SIGKILL).
ENDLESS = {**SMALL, "epochs": 100_000}


def queue_runs(engine: Engine, count: int, **overrides: object) -> list[str]:
    """Queue `count` runs (seeds 0..count-1) in one transaction; returns their ids."""
    specs = [
        RunSpec(make_config({**SMALL, "seed": i, **overrides}).model_dump()) for i in range(count)
    ]
    return EpochWriter(engine).create_runs(specs)


def wait_for(condition: Callable[[], T], timeout: float = 60.0, what: str = "condition") -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def epoch_rows(engine: Engine, run_id: str) -> list[int]:
    with transaction(engine) as conn, orm(conn) as s:
        return list(
            s.scalars(
                select(EpochMetricModel.epoch)
                .where(EpochMetricModel.run_id == run_id)
                .order_by(EpochMetricModel.epoch)
            )
        )


def epoch_counts(engine: Engine) -> dict[str, int]:
    with transaction(engine) as conn, orm(conn) as s:
        return dict(
            s.execute(
                select(EpochMetricModel.run_id, func.count()).group_by(EpochMetricModel.run_id)
            ).all()
        )


class WorkerProcess:
    """A real `gradscope worker` process whose output is collected line by line."""

    def __init__(self, db: str, *args: str) -> None:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from gradscope.cli import main; main()", "worker", "--db", db,
             *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )  # fmt: skip
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def wait(self, timeout: float = 60.0) -> int:
        """Exit code; kills the process and fails the test if it does not exit in time."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            self._reader.join(5)
            raise AssertionError(
                f"worker did not exit within {timeout} s:\n{self.output}"
            ) from None
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def drain_concurrently(
    db: str, engine: Engine, workers: list[WorkerProcess], *, processes: int, runs: int
) -> None:
    """Once all `processes` training processes are ready (so they contend for every claim),
    queue `runs` small runs, let the workers drain them while a reader polls the database the
    way a dashboard does, stop the workers with SIGTERM, and check that every run was trained
    exactly once, with no errors anywhere."""
    wait_for(
        lambda: sum(w.count(" ready, ") for w in workers) == processes,
        timeout=120,
        what=f"{processes} training processes ready",
    )
    ids = queue_runs(engine, runs)
    reader = make_engine(db)
    errors: list[BaseException] = []
    reads = 0
    stop_reading = threading.Event()

    def poll() -> None:
        nonlocal reads
        while not stop_reading.is_set():
            try:
                list_runs(reader)
                epoch_counts(reader)
                reads += 1
            except Exception as exc:  # noqa: BLE001 - any error is a failure, collected
                errors.append(exc)
            stop_reading.wait(0.02)  # a dashboard's pace, not a busy loop

    thread = threading.Thread(target=poll)
    thread.start()
    try:
        wait_for(
            lambda: {r.status for r in list_runs(engine) if r.id in ids} == {"completed"},
            timeout=120,
            what=f"{runs} runs completed",
        )
    finally:
        stop_reading.set()
        thread.join()
        reader.dispose()
        for w in workers:
            if w.proc.poll() is None:
                w.proc.send_signal(signal.SIGTERM)
        codes = [w.wait(timeout=30) for w in workers]
    output = "\n".join(w.output for w in workers)
    assert codes == [0] * len(workers), output
    assert errors == []
    assert reads > 0

    by_id = {r.id: r for r in list_runs(engine)}
    counts = epoch_counts(engine)
    for run_id in ids:
        # Each epoch row once, and exactly one process ever started the run.
        assert epoch_rows(engine, run_id) == [1, 2]
        assert counts[run_id] == 2
        assert sum(w.count(f"training {run_id}") for w in workers) == 1
    assert "locked" not in output
    assert "Traceback" not in output
    assert len({by_id[i].worker for i in ids}) >= 2, "the runs were not shared out"
