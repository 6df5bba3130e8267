"""Output that fits an 80-column terminal (issue 24, item 7): every command's --help, the
errors people meet, `show` without trailing spaces, and the dashboard's start-up lines."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer.main
from click import Command
from dashboard_helpers import add_run
from typer.testing import CliRunner

from gradscope.cli import app
from gradscope.cli.dashboard_commands import startup_lines
from gradscope.db.annotate import set_notes, set_tags
from gradscope.db.engine import make_engine

WIDTH = 80
runner = CliRunner()


def _commands(command: Command, path: list[str]) -> Iterator[list[str]]:
    yield path
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, [*path, name])


COMMANDS = list(_commands(typer.main.get_command(app), []))


def _run(args: list[str]) -> str:
    result = runner.invoke(app, args, env={"COLUMNS": str(WIDTH)})
    return result.output


def _too_long(text: str) -> list[str]:
    return [line for line in text.splitlines() if len(line) > WIDTH]


def _first_word(line: str) -> str:
    words = line.split()
    return words[0] if words else ""


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "gradscope")
def test_help_fits_80_columns_and_never_breaks_a_sentence_early(path: list[str]) -> None:
    text = _run([*path, "--help"])
    assert "Usage" in text
    assert _too_long(text) == []
    assert "…" not in text, "a help text was cut with an ellipsis"
    # The description (above the option panels) is wrapped greedily: no line ends while the
    # next line's first word would still have fitted on it.
    description = text.split("╭")[0].splitlines()
    for line, following in zip(description, description[1:], strict=False):
        if line.strip() and following.strip() and not following.strip().startswith("Usage"):
            room = WIDTH - 2 - len(line.rstrip())  # rich keeps one space of margin each side
            assert len(_first_word(following)) > room, (line, following)


def test_the_command_list_gives_each_command_one_unbroken_summary() -> None:
    from gradscope.cli.main import command_summary

    text = _run(["--help"])
    panel = " ".join(
        " ".join(line.strip("│ ").split()) for line in text.splitlines() if line.startswith("│")
    )
    for info in app.registered_commands:
        doc = info.callback.__doc__ if info.callback else None
        if doc:
            assert command_summary(doc) in panel, command_summary(doc)


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)  # relative paths: the errors name them as given
    engine = make_engine("runs.db")
    run_id = add_run(engine, arch="sigmoid", depth=3, grad_norms=(1e-6, 1e-4, 1e-2, 1.0))
    set_notes(engine, run_id, "a note that is long enough to need more than one line " * 3)
    set_tags(engine, run_id, add=["baseline", "keep"])
    engine.dispose()
    return run_id


ERRORS = [
    ["train", "--db", "runs.db", "--depth", "0", "--width", "0", "--lr", "-1"],
    ["submit", "--db", "runs.db", "--depth", "200", "--width", "4096"],
    ["sweep", "--db", "runs.db", "--depth", "2,0,-1", "--width", "x,y", "--lr", "0,-1"],
    ["tag", "--db", "tpyo.db", "1234abcd", "x"],
    ["worker", "--db", "tpyo.db"],
    ["worker", "--db", "runs.db", "--max-workers", "4"],
    ["show", "--db", "runs.db", "ffffffff"],
    ["runs", "--db", "runs.db", "--arch", "tanh"],
    ["runs", "--db", "runs.db", "--status", "finished"],
    ["import", "--db", "runs.db", "not-a-database.db"],
    ["dashboard", "--db", "runs.db", "--host", "no.such.host.invalid"],
]


@pytest.mark.parametrize("args", ERRORS, ids=lambda a: " ".join(a[:1] + a[3:5]))
def test_errors_fit_80_columns(database: str, args: list[str]) -> None:
    Path("not-a-database.db").write_text("plain text, not SQLite\n" * 10)
    result = runner.invoke(app, args, env={"COLUMNS": str(WIDTH)})
    assert result.exit_code != 0
    assert "Traceback" not in result.output
    assert _too_long(result.output) == []


def test_show_fits_80_columns_without_trailing_spaces(database: str) -> None:
    text = _run(["show", database[:8], "--db", "runs.db"])
    assert "Diagnosis" in text and "Layers at epoch" in text and "baseline" in text
    assert _too_long(text) == []
    padded = [line for line in text.splitlines() if line != line.rstrip()]
    assert padded == []


def test_runs_fit_80_columns_without_trailing_spaces(database: str) -> None:
    text = _run(["runs", "--db", "runs.db"])
    assert _too_long(text) == [] and all(line == line.rstrip() for line in text.splitlines())


@pytest.mark.parametrize("length", [10, 60, 120])
def test_the_dashboard_start_up_never_wraps_the_database_path(length: int) -> None:
    path = "/data/" + "p" * length + "/runs.db"
    lines = startup_lines("http://localhost:8501", path, worker=False, read_only=True)
    assert any(line.endswith(path) for line in lines)  # whole, on one line
    assert [line for line in lines if len(line) > WIDTH and line != path] == []
    assert re.match(r"gradscope dashboard: http://localhost:8501$", lines[0])
