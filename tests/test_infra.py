"""The test infrastructure itself works: private PostgreSQL server, per-test databases, browser."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import free_port
from pg_server import PostgresServer


def test_free_port_is_bindable() -> None:
    import socket

    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def test_db_path_does_not_exist_yet(db_path: Path) -> None:
    assert not db_path.exists()
    assert db_path.parent.is_dir()


@pytest.mark.postgres
def test_postgres_accepts_sqlalchemy_connection(pg_server: PostgresServer, pg_url: str) -> None:
    assert pg_server.url.startswith("postgresql+psycopg://postgres@127.0.0.1:")
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT 1 + 1")).scalar_one() == 2
            version = conn.execute(sa.text("SHOW server_version_num")).scalar_one()
            current = conn.execute(sa.text("SELECT current_database()")).scalar_one()
        assert int(version) >= 120000
        assert current == pg_url.rsplit("/", 1)[1]
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_pg_url_databases_are_independent(pg_server: PostgresServer, pg_url: str) -> None:
    other_url = pg_server.create_database("test_infra_other")
    assert other_url != pg_url
    first, second = sa.create_engine(pg_url), sa.create_engine(other_url)
    try:
        with first.begin() as conn:
            conn.execute(sa.text("CREATE TABLE only_here (x int)"))
            conn.execute(sa.text("INSERT INTO only_here VALUES (42)"))
        assert sa.inspect(first).has_table("only_here")
        assert not sa.inspect(second).has_table("only_here")
        with first.connect() as conn:
            assert conn.execute(sa.text("SELECT x FROM only_here")).scalar_one() == 42
    finally:
        first.dispose()
        second.dispose()


@pytest.mark.postgres
def test_fresh_pg_url_is_empty(pg_url: str) -> None:
    # Runs after the test above created a table: this database must not have it.
    engine = sa.create_engine(pg_url)
    try:
        assert sa.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


@pytest.mark.browser
def test_browser_renders_data_url(browser) -> None:
    page = browser.new_page()
    try:
        page.goto(
            "data:text/html,<title>infra</title><h1 id=h>Hello%20gradscope</h1>"
            "<script>document.body.append('js ran')</script>"
        )
        assert page.title() == "infra"
        assert page.locator("#h").inner_text() == "Hello gradscope"
        assert "js ran" in page.locator("body").inner_text()
    finally:
        page.close()


def test_asyncio_usable_after_browser_test() -> None:
    # Runs after the browser test: Playwright's loop must not look "running" here
    # (conftest's _hide_playwright_loop), or asyncio.run() raises.
    import asyncio

    assert asyncio.run(asyncio.sleep(0, result="ok")) == "ok"
