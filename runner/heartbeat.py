"""The one heartbeat of every process that trains runs: a queue worker's slot (and so each Ray
actor), `gradscope train` in the foreground, and a `gradscope.init()` run.

A daemon thread calls `gradscope.db.lifecycle.heartbeat` every `every_s` seconds for the runs it
tracks and keeps, in memory, what the beat learnt: a cancel was requested, or the run is no
longer ours (another worker's recovery marked it lost: its final status is written, and it may
be queued again). Training asks `should_stop()`, which reads memory only, so it can ask at every
check; once a run is lost it is not beaten again and the trainer's writes, guarded by the worker
name (gradscope.db.epoch_writes.EpochWriter), write nothing more.

A database error in a beat is transient: the thread keeps trying every `every_s` and says so once
per outage (and once when beats go through again). `chores` run on the same thread after beats:
a worker's recovery of other workers' stale runs, its check that its parent process lives.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType

from sqlalchemy import Engine

from gradscope.db import lifecycle
from gradscope.vocab.protocol import HEARTBEAT_S


@dataclass(frozen=True)
class Chore:
    """Work for the heartbeat thread: `action` every `every_s` seconds (0: after every beat)."""

    every_s: float
    action: Callable[[], None]


class Heartbeat:
    """Heartbeats the runs `worker` trains, and learns of cancel requests and lost runs.

    `track()` says which runs are being trained now (a worker's slot changes them per claim;
    the foreground and API pass theirs at construction). `say` receives the few messages (a
    failing database, a lost run). Use as a context manager, or `start()`/`stop()`.
    """

    def __init__(
        self,
        engine: Engine,
        worker: str,
        run_ids: Sequence[str] = (),
        *,
        every_s: float = HEARTBEAT_S,
        say: Callable[[str], None] = lambda _message: None,
        chores: Iterable[Chore] = (),
    ) -> None:
        self.engine = engine
        self.worker = worker
        self.every_s = every_s
        self._say = say
        self._chores = list(chores)
        self._lock = threading.Lock()
        self._tracked: tuple[str, ...] = tuple(run_ids)
        self._generation = 0  # bumped by track(): a beat's answer for older runs is dropped
        self._cancelled: set[str] = set()
        self._lost: set[str] = set()
        self._failing = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gradscope-heartbeat", daemon=True)

    # -- what training asks: memory only, cheap enough for every check ----------------------
    def track(self, run_ids: Sequence[str]) -> None:
        """Heartbeat these runs from now on (none: an idle worker), forgetting older flags."""
        with self._lock:
            self._tracked = tuple(run_ids)
            self._generation += 1
            self._cancelled = set()
            self._lost = set()

    @property
    def run_ids(self) -> tuple[str, ...]:
        return self._tracked

    def cancelled(self, run_id: str) -> bool:
        with self._lock:
            return run_id in self._cancelled

    def lost(self, run_id: str) -> bool:
        """True once the run is no longer this worker's (marked lost, finished elsewhere)."""
        with self._lock:
            return run_id in self._lost

    def should_stop(self, run_ids: Sequence[str] | None = None) -> str | None:
        """The status to stop training `run_ids` (default: every tracked run) with, or None:
        "interrupted" when none of them is ours any more (their stored status stays, the
        guarded finish writes nothing), "cancelled" when each is cancelled or lost."""
        with self._lock:
            ids = self._tracked if run_ids is None else tuple(run_ids)
            if not ids:
                return None
            if all(i in self._lost for i in ids):
                return "interrupted"
            if all(i in self._cancelled or i in self._lost for i in ids):
                return "cancelled"
        return None

    # -- the beat -----------------------------------------------------------------------------
    def beat(self) -> bool:
        """One heartbeat now (the thread calls this every `every_s`): touch the tracked runs
        that are still ours, and note cancel requests and losses. Returns False when no tracked
        run is ours any more (nothing is left to beat). Raises StorageError."""
        with self._lock:
            generation = self._generation
            ids = [i for i in self._tracked if i not in self._lost]
        if not ids:
            return False
        beats = lifecycle.heartbeat(self.engine, ids, self.worker)
        lost = []
        with self._lock:
            if generation != self._generation:
                return True  # the runs changed meanwhile; their flags start afresh
            for run_id, beat in beats.items():
                if beat.cancel_requested:
                    self._cancelled.add(run_id)
                if not beat.owned:
                    self._lost.add(run_id)
                    lost.append(run_id)
            left = any(i not in self._lost for i in self._tracked)
        for run_id in lost:
            self._say(
                f"run {run_id} was marked lost or finished elsewhere: it stops here, and "
                "nothing more of it is recorded"
            )
        return left

    # -- the thread ---------------------------------------------------------------------------
    def start(self) -> Heartbeat:
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        """End the thread, letting a beat in progress finish (up to `timeout_s`: a database
        that hangs must not hang the caller; the thread is a daemon)."""
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout_s)

    def __enter__(self) -> Heartbeat:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _loop(self) -> None:
        due = [time.monotonic() + chore.every_s for chore in self._chores]
        while not self._done.wait(self.every_s):
            ok = self._attempt(self.beat)
            for k, chore in enumerate(self._chores):
                if time.monotonic() >= due[k]:
                    due[k] = time.monotonic() + chore.every_s
                    ok = self._attempt(chore.action) and ok
            if ok and self._failing:
                self._say("heartbeat works again")
            self._failing = not ok

    def _attempt(self, action: Callable[[], object]) -> bool:
        try:
            action()
        except Exception as exc:  # noqa: BLE001 - transient: the next beat tries again
            if not self._failing:
                self._say(f"heartbeat failed (trying again every {self.every_s:g} s): {exc}")
                self._failing = True
            return False
        return True
