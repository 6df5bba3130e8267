"""Commands that only read open the database read-only: a typo creates nothing, a shared file
keeps its journal mode, read-only media can be read, and writes there fail in one line."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from gradscope.cli import app
from gradscope.db import frames
from gradscope.db.engine import SCHEMA_REVISION, make_engine
from gradscope.db.errors import StorageError
from gradscope.db.lifecycle import create_runs
from gradscope.vocab.records import RunSpec

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent

READ_COMMANDS = [
    ["runs"],
    ["runs", "--json"],
    ["show", "abcd"],
    ["export", "out.db"],
    ["export-csv", "tables"],
    ["import", "source.db", "--dry-run"],
    ["db", "current"],
]


@pytest.mark.parametrize("command", READ_COMMANDS, ids=" ".join)
def test_a_read_command_on_a_missing_database_creates_nothing(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "source.db").write_bytes(b"")  # for import: the target is what must not appear
    result = runner.invoke(app, [*command, "--db", "tpyo.db"])
    assert result.exit_code != 0
    assert "error: no database at tpyo.db" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["source.db"]  # no -wal/-shm either


@pytest.mark.parametrize(
    "command",
    [["train", "--depth", "0"], ["submit", "--depth", "0"], ["sweep", "--depth", "2,0"]],
    ids=lambda c: c[0],
)
def test_a_refused_config_creates_no_database(
    command: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, [*command, "--db", "new.db"])
    assert result.exit_code != 0 and "depth" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("as_url", [False, True], ids=["path", "sqlite-url"])
def test_a_write_never_creates_missing_folders(tmp_path: Path, as_url: bool) -> None:
    target = tmp_path / "no" / "such" / "folder" / "runs.db"
    db = f"sqlite:///{target}" if as_url else str(target)
    result = runner.invoke(app, ["submit", "--db", db])
    assert result.exit_code != 0
    assert f"no folder {target.parent}" in " ".join(result.output.split())  # wrapped at 80
    assert list(tmp_path.iterdir()) == []


def test_reads_leave_a_rollback_journal_file_in_its_mode(tmp_path: Path) -> None:
    db = tmp_path / "shared.db"
    engine = make_engine(str(db))
    [run_id] = create_runs(engine, [RunSpec({"depth": 2})])
    engine.dispose()
    with sqlite3.connect(db) as conn:  # as a teammate's tool might have left it
        assert conn.execute("PRAGMA journal_mode=DELETE").fetchone() == ("delete",)
    for command in (
        ["runs"],
        ["show", run_id[:8]],
        ["db", "current"],
        ["export-csv", str(tmp_path / "t")],
    ):
        result = runner.invoke(app, [*command, "--db", str(db)], catch_exceptions=False)
        assert result.exit_code == 0, (command, result.output)
    assert run_id[:8] in runner.invoke(app, ["runs", "--db", str(db)]).output
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    assert not Path(f"{db}-wal").exists()


def test_a_read_only_engine_reads_and_refuses_writes_in_one_line(
    engine: Engine, database: str
) -> None:
    [run_id] = create_runs(engine, [RunSpec({})])
    result = runner.invoke(app, ["runs", "--json", "--db", database])
    assert result.exit_code == 0 and [r["id"] for r in json.loads(result.output)] == [run_id]
    read_only = make_engine(database, read_only=True)
    try:
        with pytest.raises(StorageError) as refused:
            create_runs(read_only, [RunSpec({})])
    finally:
        read_only.dispose()
    assert "read-only" in str(refused.value) and "\n" not in str(refused.value).strip()
    assert len(frames.runs(engine)) == 1


# The probe runs where the database's folder is read-only: as root (which ignores file modes)
# inside a private mount namespace with the folder bind-mounted read-only; otherwise by mode.
PROBE = r"""
import json, sys
from sqlalchemy import Engine
from typer.testing import CliRunner
from gradscope.cli import app
from gradscope.db import frames
from gradscope.db.engine import make_engine
from gradscope.db import frames
from gradscope.db.lifecycle import create_runs
from gradscope.db.errors import StorageError
from gradscope.vocab.records import RunSpec

db, run_id = sys.argv[1], sys.argv[2]
cli = CliRunner()
out = {}
for name, args in {
    "runs": ["runs", "--json"],
    "show": ["show", run_id[:8], "--json"],
    "current": ["db", "current"],
    "submit": ["submit"],
}.items():
    r = cli.invoke(app, [*args, "--db", db])
    out[name] = [r.exit_code, r.output]
engine = make_engine(db, read_only=None)  # as the dashboard opens it
out["dashboard_runs"] = list(frames.runs(engine)["id"])
try:
    create_runs(engine, [RunSpec({})])
    out["dashboard_write"] = "written"
except StorageError as exc:
    out["dashboard_write"] = str(exc)
print(json.dumps(out))
"""


@pytest.mark.slow  # a process of its own
@pytest.mark.parametrize("journal", ["wal", "delete"])
def test_a_database_on_a_read_only_folder_can_be_read(tmp_path: Path, journal: str) -> None:
    folder = tmp_path / "media"
    folder.mkdir()
    db = folder / "runs.db"
    engine = make_engine(str(db))
    [run_id] = create_runs(engine, [RunSpec({"depth": 2}, name="kept")])
    engine.dispose()
    with sqlite3.connect(db) as conn:  # no -wal/-shm left beside it, as on a copied medium
        conn.execute(f"PRAGMA journal_mode={journal}")
    before = sorted(p.name for p in folder.iterdir())
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    probe = [sys.executable, "-c", PROBE, str(db), run_id]
    if os.geteuid() == 0:
        mount = 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
        command = ["unshare", "-m", "sh", "-c", mount, "sh", str(folder), *probe]
        if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0:
            pytest.skip("unshare -m is not allowed here (needed to mount read-only as root)")
    else:
        command = probe
        folder.chmod(0o555)
        db.chmod(0o444)
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
    finally:
        folder.chmod(0o755)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["runs"][0] == 0 and [r["id"] for r in json.loads(out["runs"][1])] == [run_id]
    assert out["show"][0] == 0 and json.loads(out["show"][1])["name"] == "kept"
    assert out["current"][0] == 0 and SCHEMA_REVISION in out["current"][1]
    code, text = out["submit"]
    # One message (wrapped at 80 columns), not a traceback.
    assert code != 0 and "read-only" in text and text.count("error:") == 1
    assert text.startswith("error:") and "Traceback" not in text
    assert out["dashboard_runs"] == [run_id]
    assert "read-only" in out["dashboard_write"]
    assert sorted(p.name for p in folder.iterdir()) == before
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == (journal,)
