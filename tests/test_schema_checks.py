"""The schema is checked, not only its version stamp, and refusals say what is refused (issue 24,
item 14): a database that lost a table is refused with the command that recreates it; a write
command refusing a newer database leaves it untouched (no switch to WAL); an import refusing an
expression index, or a file rewritten while it is read, says so."""

from __future__ import annotations

import sqlite3
from pathlib import Path, PosixPath

import pytest
from typer.testing import CliRunner

import gradscope
from gradscope.cli import app
from gradscope.db.engine import make_engine
from gradscope.db.errors import SchemaVersionError
from gradscope.db.share import source as share_source
from gradscope.db.share.base import ImportRefused
from gradscope.db.share.export import export_runs, select_run_ids
from gradscope.db.share.importing import import_file

runner = CliRunner()


def recorded(db: Path) -> str:
    with gradscope.init(db=str(db), name="one") as run:
        run.log_epoch(train_loss=0.5)
    run.engine.dispose()  # no pooled connection left holding the file
    return run.id


def test_a_database_missing_a_table_is_refused_and_upgrade_recreates_it(db_path: Path) -> None:
    run_id = recorded(db_path)
    with sqlite3.connect(db_path) as conn:
        conn.execute("DROP TABLE layer_stats")
    with pytest.raises(SchemaVersionError, match="lacks the table.s. layer_stats") as caught:
        make_engine(str(db_path))
    assert "gradscope db upgrade" in str(caught.value)
    upgraded = runner.invoke(app, ["db", "upgrade", "--db", str(db_path)])
    assert upgraded.exit_code == 0, upgraded.output
    assert "recreated missing table(s), empty: layer_stats" in upgraded.output
    shown = runner.invoke(app, ["show", "--db", str(db_path), run_id])
    assert shown.exit_code == 0, shown.output
    recorded(db_path)  # recording works again


@pytest.mark.parametrize(
    "command", [["tag", "{id}", "x"], ["note", "{id}", "n"], ["db", "upgrade"], ["worker"]]
)
def test_a_newer_database_is_refused_by_write_commands_without_switching_it_to_wal(
    db_path: Path, command: list[str]
) -> None:
    run_id = recorded(db_path)
    with sqlite3.connect(db_path) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("UPDATE alembic_version SET version_num = '0099_future'")
    before = db_path.read_bytes()
    args = [a.format(id=run_id) for a in command]
    result = runner.invoke(app, [*args, "--db", str(db_path)])
    assert result.exit_code != 0
    assert "0099_future" in result.output and "newer" in result.output
    assert db_path.read_bytes() == before  # journal mode (header bytes 18-19) untouched
    assert not Path(f"{db_path}-wal").exists()


def exported(db: Path, folder: Path) -> Path:
    recorded(db)
    engine = make_engine(str(db))
    out = folder / "out.db"
    export_runs(engine, select_run_ids(engine), out)
    engine.dispose()
    return out


def test_an_expression_index_is_refused_by_name_not_as_a_malformed_schema(
    db_path: Path, tmp_path: Path
) -> None:
    path = exported(db_path, tmp_path)
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE INDEX by_user ON runs(json_extract(config, '$.user'))")
    with pytest.raises(ImportRefused) as caught:
        import_file(make_engine(str(tmp_path / "target.db")), path)
    message = str(caught.value)
    assert "'by_user'" in message and "json_extract" in message and "refused" in message
    assert "malformed" not in message


class RewrittenWhileRead(PosixPath):
    """A file another program rewrites after the import read its first chunk."""

    def open(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201 (a test double)
        handle = super().open(*args, **kwargs)
        real_read, path, done = handle.read, Path(self), []

        def read(size: int = -1) -> bytes:
            data = real_read(size)
            if data and not done:
                done.append(True)
                with sqlite3.connect(path) as conn:  # a rollback-journal writer
                    conn.execute("CREATE TABLE IF NOT EXISTS other (x)")
                    conn.execute("INSERT INTO other VALUES (randomblob(2000000))")
            return data

        handle.read = read  # type: ignore[method-assign]
        return handle


def test_a_file_rewritten_while_it_is_read_is_said_to_have_changed(
    db_path: Path, tmp_path: Path
) -> None:
    path = exported(db_path, tmp_path)
    copying = share_source.private_copy(RewrittenWhileRead(path), 10**9, "out.db")
    with pytest.raises(ImportRefused) as caught:
        copying.__enter__()
    message = str(caught.value)
    assert "changed while it was being read" in message and "damaged" not in message
