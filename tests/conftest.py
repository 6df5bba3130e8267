"""Shared fixtures. Sections: helpers (free_port), SQLite, PostgreSQL, both (the `engine`
fixture), browser.

Fixtures for external services skip (with the reason) when the service is missing here;
`bash .ci/run` installs PostgreSQL and chromium so that nothing skips in CI.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_server import PostgresServer, PostgresUnavailable, free_port
from sqlalchemy import Engine

__all__ = ["free_port"]  # helper for tests: `from conftest import free_port`

# ---------------------------------------------------------------------------------------------
# SQLite
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    """Path of a SQLite file that does not exist yet (the code under test creates it)."""
    return tmp_path / "gradscope.db"


# ---------------------------------------------------------------------------------------------
# PostgreSQL: one private server per session, one fresh database per test
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        server.start()
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    try:
        yield server
    finally:
        server.stop()


_db_counter = itertools.count(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that asks for PostgreSQL by fixture is a postgres test, marked or not, so
    `-m "not postgres"` leaves it out and starts no server."""
    for item in items:
        if {"pg_url", "pg_server"} & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.postgres)


@pytest.fixture
def pg_url(request: pytest.FixtureRequest) -> str:
    """SQLAlchemy URL of an empty database of its own (postgresql+psycopg://...)."""
    # `-m "not postgres"` must start no server: a test reaching for one unmarked is a bug.
    if request.node.get_closest_marker("postgres") is None:
        pytest.fail(f"{request.node.nodeid} uses PostgreSQL but is not marked postgres")
    pg_server: PostgresServer = request.getfixturevalue("pg_server")
    # pid keeps names unique should several pytest processes ever share one server.
    return pg_server.create_database(f"test_{os.getpid()}_{next(_db_counter)}")


# ---------------------------------------------------------------------------------------------
# Both: the one `engine` fixture. Each test that takes it runs on a SQLite file and on
# PostgreSQL; the PostgreSQL run carries the `postgres` marker, so `-m "not postgres"` leaves it
# out and never starts the server (pg_server is only requested from here and by postgres tests).
# ---------------------------------------------------------------------------------------------


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database(request: pytest.FixtureRequest, db_path: Path) -> str:
    """What `--db` would say for the test's database: a SQLite path, or a PostgreSQL URL of an
    empty database of its own. Hand it to the code under test (CLI, dashboard) with `engine`."""
    if request.param == "postgres":
        return request.getfixturevalue("pg_url")
    return str(db_path)


@pytest.fixture
def engine(database: str) -> Iterator[Engine]:
    """An engine on `database`, schema created (SQLite and PostgreSQL, see `database`)."""
    from gradscope.db.engine import make_engine

    engine = make_engine(database)
    yield engine
    engine.dispose()


@pytest.fixture
def sqlite_engine(db_path: Path) -> Iterator[Engine]:
    """An engine on the SQLite file `db_path`, for tests about SQLite itself (its file, WAL,
    several processes sharing one file)."""
    from gradscope.db.engine import make_engine

    engine = make_engine(str(db_path))
    yield engine
    engine.dispose()


# ---------------------------------------------------------------------------------------------
# Browser: Debian's chromium driven by Playwright (sync API, no pytest-playwright)
# ---------------------------------------------------------------------------------------------

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",  # we run as root in CI
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]  # never --user-data-dir: Playwright refuses it (launch() makes a fresh profile anyway)


@pytest.fixture(scope="session")
def chromium_path() -> Path:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} missing: apt-get install -y --no-install-recommends chromium")
    return CHROMIUM


@pytest.fixture(scope="session")
def browser(chromium_path: Path):
    """One headless chromium for the session; tests open their own pages/contexts and close them."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(chromium_path), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(autouse=True)
def _hide_playwright_loop(request: pytest.FixtureRequest) -> Iterator[None]:
    """Keep the session browser from leaking into tests that do not use it.

    Between calls, Playwright's sync API leaves its event loop marked as *running* in the main
    thread, so once `browser` has started, `asyncio.run()` (and anything that checks for a
    running loop) fails in every later test of the session. Hide the loop from other tests.
    """
    loop = asyncio._get_running_loop()
    if loop is None or "browser" in request.fixturenames:
        yield
        return
    asyncio._set_running_loop(None)
    try:
        yield
    finally:
        asyncio._set_running_loop(loop)


# ---------------------------------------------------------------------------------------------
# Seeded databases: real training runs, made once per session and copied per test
# ---------------------------------------------------------------------------------------------

# Small but real: the sigmoid run vanishes and collapses, relu and resnet learn.
SEED_RUNS = (
    {
        "arch": "sigmoid",
        "depth": "6",
        "width": "16",
        "samples": "512",
        "epochs": "4",
        "name": "seed sigmoid",
    },
    {
        "arch": "relu",
        "depth": "6",
        "width": "16",
        "samples": "512",
        "epochs": "4",
        "name": "seed relu",
    },
    {
        "arch": "resnet",
        "depth": "6",
        "width": "16",
        "samples": "512",
        "epochs": "4",
        "name": "seed resnet",
    },
)


@pytest.fixture(scope="session")
def seeded_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file holding three completed runs (sigmoid, relu, resnet), made once."""
    from gradscope.db.engine import make_engine
    from gradscope.runner.foreground import train_foreground

    path = tmp_path_factory.mktemp("seeded") / "seeded.db"
    engine = make_engine(str(path))
    for values in SEED_RUNS:
        train_foreground(engine, dict(values), progress=False)
    engine.dispose()
    return path


@pytest.fixture
def seeded_db(seeded_template: Path, tmp_path: Path) -> Path:
    """A private copy of the seeded database (tests may write to it)."""
    import shutil
    import sqlite3

    target = tmp_path / "seeded.db"
    # sqlite3's backup API copies a consistent snapshot, WAL contents included.
    with sqlite3.connect(seeded_template) as src, sqlite3.connect(target) as dst:
        src.backup(dst)
    shutil.copymode(seeded_template, target)
    return target
