"""The words processes use to talk to each other: environment variables, heartbeat timing and
worker identity. Written once here; the CLI, workers, the API and the dashboard all read them.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

# -- environment variables ------------------------------------------------------------------
DB_ENV = "GRADSCOPE_DB"  # the database when no --db is given
QUIET_ENV = "GRADSCOPE_QUIET"  # "1": gradscope.init() prints no line on stderr
WORKER_PID_ENV = "GRADSCOPE_WORKER_PID"  # the worker `gradscope dashboard` started
THREADS_ENV = "GRADSCOPE_THREADS"  # torch threads per training process (default 1)
EXPOSED_ENV = "GRADSCOPE_DASHBOARD_EXPOSED"  # "1" when bound beyond loopback
WRITES_ENV = "GRADSCOPE_DASHBOARD_WRITES"  # "0" for a read-only dashboard
DATA_DIR_ENV = "GRADSCOPE_DATA_DIR"  # CSV paths from the form must lie in this folder


# -- heartbeats ------------------------------------------------------------------------------
# Every process that trains a run (a worker, `gradscope train`, a `gradscope.init()` run) touches
# its heartbeat this often (gradscope.runner.heartbeat.Heartbeat) ...
HEARTBEAT_S = 2.0
# ... and a running run whose heartbeat is older than this is "worker lost" to any worker's
# recovery: 30 missed beats, so a busy machine's late beat never loses a live run.
STALE_AFTER_S = 60.0
# The range a heartbeat interval may take (as the CLI's --heartbeat): 0 or NaN would write
# in a busy loop, and a day is the longest any duration option takes.
MIN_HEARTBEAT_S = 0.05
MAX_HEARTBEAT_S = 86_400.0
# The longest a worker's name may be (the runs.worker column).
MAX_WORKER_CHARS = 200


def recovery_every_s(heartbeat_s: float, stale_after_s: float) -> float:
    """How often a worker looks for other workers' stale runs: a quarter of the stale limit
    (a lost run waits at most 1.25 stale limits), never more often than it heartbeats."""
    return max(heartbeat_s, stale_after_s / 4)


def heartbeat_problem(seconds: object) -> str | None:
    """Why `seconds` is no heartbeat interval, or None."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return f"heartbeat_s must be a number of seconds, got {type(seconds).__name__}"
    if not MIN_HEARTBEAT_S <= seconds <= MAX_HEARTBEAT_S:  # NaN fails too
        return (
            f"heartbeat_s is {seconds!r}; it must lie in {MIN_HEARTBEAT_S:g}..{MAX_HEARTBEAT_S:g}"
            " seconds"
        )
    return None


def worker_identity(role: str | None = None) -> str:
    """Who trains a run, as stored in runs.worker: "host:pid", with the role after it when
    it is not a queue worker ("host:pid (foreground)"). A heartbeat only touches runs stored
    under its own identity."""
    name = f"{socket.gethostname()}:{os.getpid()}"
    if role is not None:
        name = f"{name} ({role})"
    return name[:MAX_WORKER_CHARS]


def local_pid(worker: str) -> int | None:
    """The process id in a worker_identity() name when it names a process on this machine,
    else None (a process elsewhere: only its heartbeat tells whether it lives)."""
    host, _, pid = worker.split(" ", 1)[0].rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    return int(pid)


def access_env(*, exposed: bool, allow_writes: bool, data_dir: Path | None) -> dict[str, str]:
    """How `gradscope dashboard` tells its Streamlit server what visitors may do (read by
    gradscope.dashboard.access), for a dashboard bound beyond loopback (`exposed`) or not."""
    env = {
        EXPOSED_ENV: "1" if exposed else "0",
        WRITES_ENV: "0" if exposed and not allow_writes else "1",
    }
    if data_dir is not None:
        env[DATA_DIR_ENV] = str(data_dir.expanduser().resolve())
    return env
