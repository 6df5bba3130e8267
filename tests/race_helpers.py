"""Open one database from several processes at the same instant (a start barrier, not sleeps).

Kept apart from the test modules so that each spawned process imports only db.engine.
"""

from __future__ import annotations

import multiprocessing
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier

from db.engine import make_engine


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
