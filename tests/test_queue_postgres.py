"""Four worker processes draining one PostgreSQL queue while a reader polls it."""

from __future__ import annotations

import pytest
from worker_helpers import WorkerProcess, drain_concurrently

from gradscope.db.engine import make_engine

pytestmark = [pytest.mark.postgres, pytest.mark.slow]


def test_four_worker_processes_share_one_postgres_database(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        workers = [WorkerProcess(pg_url, "--concurrency", "4", "--poll", "0.05")]
        drain_concurrently(pg_url, engine, workers, processes=4, runs=20)
    finally:
        engine.dispose()
