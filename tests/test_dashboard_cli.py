"""`gradscope dashboard`: its options, and the failures it reports before starting anything.
(Starting it for real, with its worker, is the end-to-end browser test.)"""

from __future__ import annotations

import socket
import sqlite3
from pathlib import Path

from conftest import free_port
from typer.testing import CliRunner

from gradscope.cli import app
from gradscope.cli.dashboard_commands import streamlit_command

cli = CliRunner()


def test_help_lists_the_options() -> None:
    result = cli.invoke(app, ["dashboard", "--help"])
    assert result.exit_code == 0
    for option in ("--db", "--host", "--port", "--no-worker"):
        assert option in result.output
    assert "127.0.0.1" in result.output


def test_streamlit_runs_headless_on_the_given_address() -> None:
    command = streamlit_command("127.0.0.1", 8765)
    assert command[1:4] == ["-m", "streamlit", "run"]
    assert Path(command[4]).name == "app.py" and Path(command[4]).exists()
    pairs = dict(zip(command[5::2], command[6::2], strict=True))
    assert pairs["--server.headless"] == "true"
    assert pairs["--server.address"] == "127.0.0.1"
    assert pairs["--server.port"] == "8765"
    assert pairs["--browser.gatherUsageStats"] == "false"


def test_a_busy_port_is_reported(db_path: Path) -> None:
    port = free_port()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", port))
        busy.listen()
        result = cli.invoke(app, ["dashboard", "--db", str(db_path), "--port", str(port)])
    assert result.exit_code == 2
    assert f"port {port}" in result.output and "--port" in result.output


def test_a_database_from_a_newer_gradscope_is_refused(db_path: Path) -> None:
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)")
        conn.execute("INSERT INTO alembic_version VALUES ('9999_future')")
    result = cli.invoke(app, ["dashboard", "--db", str(db_path), "--port", str(free_port())])
    assert result.exit_code == 2
    assert "newer gradscope" in result.output
