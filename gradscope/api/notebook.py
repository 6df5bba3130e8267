"""Runs in Jupyter/IPython: a cell that raises ends the runs still open.

A kernel is one long process: the exit hooks (`atexit`, `sys.excepthook`) fire when it ends, not
when a cell fails, so a training cell that raised would leave its run "running" with a live
heartbeat for as long as the kernel lives. IPython's `post_run_cell` event sees every cell's
result: after a cell whose code raised, every open run is finished as `failed` (`interrupted`
for a KeyboardInterrupt, the stop button) with the error's text, as `with gradscope.init(...)`
does in a script. Registered once per kernel, at the first `init()`, only when IPython is already
loaded (never imported here). The heartbeat thread is a daemon: a dead or restarted kernel takes
it along, and the run goes stale and is marked lost by any worker's recovery.
"""

from __future__ import annotations

import sys
from typing import Any

_registered: set[int] = set()  # ids of the shells the hook is registered with


def watch_cells() -> bool:
    """Register the post-run-cell hook with the running IPython shell, once. Returns True when
    registered (now or before), False outside IPython."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    get = getattr(ipython, "get_ipython", None)
    shell = get() if get is not None else None
    events = getattr(shell, "events", None)
    if shell is None or events is None:
        return False
    if id(shell) not in _registered:
        events.register("post_run_cell", after_cell)
        _registered.add(id(shell))
    return True


def after_cell(result: Any) -> None:
    """IPython's post_run_cell callback: fail the open runs when the cell's code raised."""
    exc = getattr(result, "error_in_exec", None)
    if exc is None:
        return
    fail_open_runs(exc)


def fail_open_runs(exc: BaseException) -> None:
    from gradscope.api.run import _active

    for run in list(_active):
        if isinstance(exc, KeyboardInterrupt):
            run._close("interrupted", "interrupted (KeyboardInterrupt)", quiet=True)
        else:
            run._close("failed", f"{type(exc).__name__}: {exc}", quiet=True)
