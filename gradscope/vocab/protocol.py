"""The words processes use to talk to each other: environment variables, heartbeat timing and
worker identity. Written once here; the CLI, workers, the API and the dashboard all read them.
"""

from __future__ import annotations

from pathlib import Path

# -- environment variables ------------------------------------------------------------------
DB_ENV = "GRADSCOPE_DB"  # the database when no --db is given
WORKER_PID_ENV = "GRADSCOPE_WORKER_PID"  # the worker `gradscope dashboard` started
EXPOSED_ENV = "GRADSCOPE_DASHBOARD_EXPOSED"  # "1" when bound beyond loopback
WRITES_ENV = "GRADSCOPE_DASHBOARD_WRITES"  # "0" for a read-only dashboard
DATA_DIR_ENV = "GRADSCOPE_DATA_DIR"  # CSV paths from the form must lie in this folder


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
