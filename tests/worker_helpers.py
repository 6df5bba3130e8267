"""Helpers for the queue tests: queue small runs, start real `gradscope worker` processes, poll
conditions with a deadline (never sleep as synchronisation)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import Engine, func, select

from db.models import EpochMetricModel
from db.records import RunSpec
from db.session import session_scope
from db.store import RunStore
from runner.config import make_config

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
    return RunStore(engine).create_runs(specs)


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
    with session_scope(engine) as s:
        return list(
            s.scalars(
                select(EpochMetricModel.epoch)
                .where(EpochMetricModel.run_id == run_id)
                .order_by(EpochMetricModel.epoch)
            )
        )


def epoch_counts(engine: Engine) -> dict[str, int]:
    with session_scope(engine) as s:
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
            [sys.executable, "-c", "from runner.cli import main; main()", "worker", "--db", db,
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
            raise AssertionError(f"worker did not exit within {timeout} s:\n{self.output}") from None
        self._reader.join(5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
