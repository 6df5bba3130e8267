"""Open one database from several processes at the same instant (a start barrier, not sleeps).

Kept apart from the test modules so that each spawned process imports only gradscope.db.engine.
"""

from __future__ import annotations

import multiprocessing
import sqlite3
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

from gradscope.db.engine import make_engine


def _open_after(barrier: Barrier, url: str, errors: Queue) -> None:
    barrier.wait()
    try:
        make_engine(url).dispose()
    except Exception as exc:  # noqa: BLE001 (reported to the parent)
        errors.put(repr(exc))


def open_concurrently(url: str, processes: int = 4) -> list[str]:
    """Open `url` from `processes` processes released together; the errors they met."""
    ctx = multiprocessing.get_context("spawn")
    barrier, errors = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_open_after, args=(barrier, url, errors)) for _ in range(processes)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
    assert [proc.exitcode for proc in procs] == [0] * processes
    found = []
    while not errors.empty():
        found.append(errors.get())
    return found


def _switch_after(barrier: Barrier, path: str, errors: Queue) -> None:
    from gradscope.db.engine import SQLITE_BUSY_TIMEOUT_MS, _switch_to_wal

    barrier.wait()
    try:
        conn = sqlite3.connect(path, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000)
        conn.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        _switch_to_wal(conn.cursor())
        conn.close()
    except Exception as exc:  # noqa: BLE001 (reported to the parent)
        errors.put(repr(exc))


def switch_to_wal_concurrently(folder: Path, rounds: int, processes: int = 8) -> list[str]:
    """Each round, `processes` forked processes switch one new SQLite file to WAL at the same
    instant (the bare step, without gradscope's imports, so that they really collide)."""
    ctx = multiprocessing.get_context("fork")
    found: list[str] = []
    for i in range(rounds):
        path = str(folder / f"wal{i}.db")
        barrier, errors = ctx.Barrier(processes), ctx.Queue()
        procs = [
            ctx.Process(target=_switch_after, args=(barrier, path, errors))
            for _ in range(processes)
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join(timeout=120)
        assert [proc.exitcode for proc in procs] == [0] * processes
        while not errors.empty():
            found.append(errors.get())
    return found
