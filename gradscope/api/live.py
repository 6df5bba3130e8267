"""A run's live warnings (gradscope.analysis.spikes): kept for the user's loop (`run.warnings`,
an `on_warning` callback), stored in run_warnings as they come, and the model's facts (contents,
backward order, the probe's outcome) kept in the run's summary for the diagnosis.

A warning is found on the thread that reduces a block of steps (the measuring thread, or the
training thread for small models); it is written by a job on the measuring thread, so the
training thread never waits for the database."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

from sqlalchemy import Engine

from gradscope.analysis.spikes import Warning_
from gradscope.db.user_runs import set_model_facts
from gradscope.db.warnings import add_warnings


class LiveWarnings:
    def __init__(self, engine: Engine, run_id: str, pool: Executor) -> None:
        self.engine = engine
        self.run_id = run_id
        self.pool = pool
        self.callback: Callable[[Warning_], Any] | None = None
        self._found: list[Warning_] = []
        self._unsaved: list[Warning_] = []
        self._lock = threading.Lock()
        self._facts: dict[str, Any] | None = None
        self.stopped = False  # set once the run is lost or finished: nothing more is written

    def add(self, warning: Warning_) -> None:
        with self._lock:
            self._found.append(warning)
            self._unsaved.append(warning)
        if self.callback is not None:
            self.callback(warning)
        # A shut-down pool (the run is finishing) refuses it: finish() flushes instead.
        with contextlib.suppress(RuntimeError):
            self.pool.submit(self.flush)

    def snapshot(self) -> list[Warning_]:
        with self._lock:
            return list(self._found)

    def flush(self) -> None:
        with self._lock:
            rows, self._unsaved = self._unsaved, []
        if rows and not self.stopped:
            add_warnings(self.engine, self.run_id, [w.to_json() for w in rows])

    def facts(self, facts: dict[str, Any]) -> None:
        """Keep the model's facts in the run's summary when they changed (one small write)."""
        if facts != self._facts and not self.stopped:
            set_model_facts(self.engine, self.run_id, facts)
            self._facts = dict(facts)
