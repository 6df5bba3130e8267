"""Commands that need existing runs never create a database (issue 24, item 4): a typo in --db
is an error, and no file (nor -wal, nor -shm) is left behind; a worker on a missing database
says so, and how to create one, instead of "finished after 0 runs"."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradscope.cli import app
from gradscope.db.engine import make_engine
from gradscope.db.lifecycle import create_runs
from gradscope.vocab.records import RunSpec

runner = CliRunner()

NEEDS_RUNS = [
    ["tag", "1234abcd", "x"],
    ["tag", "1234abcd", "x", "--remove"],
    ["note", "1234abcd", "some notes"],
    ["rename", "1234abcd", "new name"],
    ["delete", "1234abcd"],
    ["delete", "1234abcd", "--yes"],
    ["cancel", "1234abcd"],
]


def _said(output: str) -> str:
    return " ".join(output.split())  # errors wrap at the terminal's width


@pytest.mark.parametrize("command", NEEDS_RUNS, ids=" ".join)
@pytest.mark.parametrize("as_url", [False, True], ids=["path", "url"])
def test_a_command_that_needs_runs_creates_no_database(
    command: list[str], as_url: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    db = f"sqlite:///{tmp_path / 'tpyo.db'}" if as_url else "tpyo.db"
    result = runner.invoke(app, [*command, "--db", db])
    assert result.exit_code != 0
    # a path longer than the terminal is folded across lines
    assert "no database at" in _said(result.output)
    assert "tpyo.db" in result.output.replace("\n", "")
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []  # no tpyo.db, -wal or -shm


def test_a_worker_on_a_missing_database_says_so_and_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["worker", "--db", "tpyo.db", "--exit-when-idle"])
    said = _said(result.output)
    assert result.exit_code == 2, result.output
    assert "no database at tpyo.db" in said
    assert "gradscope submit --db" in said and "gradscope db upgrade --db" in said
    assert "finished after" not in said
    assert list(tmp_path.iterdir()) == []


def test_a_worker_on_an_existing_database_still_starts(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    make_engine(str(db)).dispose()
    result = runner.invoke(app, ["worker", "--db", str(db), "--exit-when-idle", "--poll", "0.01"])
    assert result.exit_code == 0, result.output
    assert "finished after 0 runs" in result.output


def test_the_commands_still_write_to_a_database_that_exists(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    engine = make_engine(str(db))
    [run_id] = create_runs(engine, [RunSpec({"depth": 2})])
    for command in (
        ["tag", run_id[:8], "keep"],
        ["note", run_id[:8], "n"],
        ["rename", run_id, "r"],
    ):
        result = runner.invoke(app, [*command, "--db", str(db)])
        assert result.exit_code == 0, result.output
    shown = runner.invoke(app, ["show", run_id[:8], "--db", str(db), "--json"])
    assert '"keep"' in shown.output and '"notes": "n"' in shown.output
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("command", [NEEDS_RUNS[0], ["worker", "--exit-when-idle"]], ids=str)
def test_an_empty_postgresql_database_is_not_given_tables(pg_url: str, command: list[str]) -> None:
    from sqlalchemy import create_engine, inspect

    result = runner.invoke(app, [*command, "--db", pg_url])
    assert result.exit_code == 2, result.output
    assert "empty" in _said(result.output)
    engine = create_engine(pg_url)
    try:
        assert inspect(engine).get_table_names() == []
    finally:
        engine.dispose()
