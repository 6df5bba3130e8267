"""Imported files are hostile: each broken or malicious file is refused with a clear message,
and the target database is exactly as before. Hypothesis mutates valid exports as well."""

from __future__ import annotations

import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from share_helpers import add_nonfinite_run, full_dump
from sqlalchemy import Engine
from typer.testing import CliRunner

from gradscope.cli import app
from gradscope.db.engine import SCHEMA_REVISION, make_engine
from gradscope.db.queries import run_document
from gradscope.db.share import source as share_source
from gradscope.db.share.base import TABLE_ORDER, TABLES, ImportRefused
from gradscope.db.share.export import export_runs, select_run_ids
from gradscope.db.share.importing import import_file


@pytest.fixture(scope="module")
def valid_file(seeded_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid export of the seeded runs plus a non-finite one, made once for this module."""
    folder = tmp_path_factory.mktemp("hostile")
    source = folder / "source.db"
    with sqlite3.connect(seeded_template) as src, sqlite3.connect(source) as dst:
        src.backup(dst)
    engine = make_engine(str(source))
    add_nonfinite_run(engine)
    out = folder / "valid.db"
    export_runs(engine, select_run_ids(engine), out)
    engine.dispose()
    return out


@pytest.fixture(scope="module")
def loose_file(valid_file: Path) -> Path:
    """The valid export with every table rebuilt without constraints: any value can be stored."""
    path = valid_file.with_name("loose.db")
    shutil.copy(valid_file, path)
    conn = sqlite3.connect(path)
    conn.executescript(";".join(unconstrained(name) for name in TABLE_ORDER))
    conn.close()
    return path


@pytest.fixture(scope="module")
def target_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A target database that already holds a run of its own."""
    path = tmp_path_factory.mktemp("target") / "target.db"
    engine = make_engine(str(path))
    add_nonfinite_run(engine, name="mine")
    engine.dispose()
    return path


def fresh_target(template: Path, folder: Path) -> Engine:
    path = folder / "target.db"
    shutil.copy(template, path)
    return make_engine(str(path))


@pytest.fixture
def target(target_template: Path, tmp_path: Path) -> Engine:
    engine = fresh_target(target_template, tmp_path)
    yield engine
    engine.dispose()


def tampered(valid: Path, folder: Path, *statements: str, name: str = "bad.db") -> Path:
    """A copy of the valid export changed by SQL statements (what a hostile sender could do)."""
    path = folder / name
    shutil.copy(valid, path)
    conn = sqlite3.connect(path)
    try:
        for sql in statements:
            conn.executescript(sql)
        conn.commit()
    finally:
        conn.close()
    return path


def assert_refused(target: Engine, path: Path, *phrases: str) -> ImportRefused:
    before = full_dump(target)
    with pytest.raises(ImportRefused) as caught:
        import_file(target, path)
    message = str(caught.value)
    for phrase in phrases:
        assert phrase in message, message
    assert full_dump(target) == before
    return caught.value


# ---------------------------------------------------------------------------------------------
# Not a (whole) SQLite database
# ---------------------------------------------------------------------------------------------


def test_the_upgrade_engine_does_not_trust_the_files_schema(
    valid_file: Path, tmp_path: Path
) -> None:
    # Alembic reads and rewrites a stranger's schema: its functions must stay harmless there.
    copy = tmp_path / "copy.db"
    shutil.copy(valid_file, copy)
    engine = share_source.upgrade_engine(copy)
    try:
        for _ in range(2):  # every connection, not only the first
            with engine.connect() as conn:
                assert conn.exec_driver_sql("PRAGMA trusted_schema").scalar() == 0
            engine.dispose()
    finally:
        engine.dispose()


def test_text_file_renamed_db(target: Engine, tmp_path: Path) -> None:
    path = tmp_path / "notes.db"
    path.write_text("these are my runs, honest\n" * 20)
    assert_refused(target, path, "not a SQLite database", "these are my")


def test_empty_file(target: Engine, tmp_path: Path) -> None:
    path = tmp_path / "empty.db"
    path.touch()
    assert_refused(target, path, "the file is empty")


@pytest.mark.parametrize("keep", [0.5, 0.25])
def test_truncated_database(target: Engine, valid_file: Path, tmp_path: Path, keep: float) -> None:
    data = valid_file.read_bytes()
    path = tmp_path / "cut.db"
    path.write_bytes(data[: int(len(data) * keep) + 100])  # not a whole number of pages
    assert_refused(target, path, "truncated")
    page = 4096
    path.write_bytes(data[: (len(data) // 2 // page) * page])  # whole pages, but too few
    assert_refused(target, path, "truncated")


def test_file_over_the_size_limit(target: Engine, valid_file: Path) -> None:
    before = full_dump(target)
    with pytest.raises(ImportRefused, match="the limit is 10,000 bytes"):
        import_file(target, valid_file, max_bytes=10_000)
    assert full_dump(target) == before


def test_missing_file(target: Engine, tmp_path: Path) -> None:
    assert_refused(target, tmp_path / "nowhere.db", "cannot read the file")


def test_a_folder_is_not_a_file(target: Engine, tmp_path: Path) -> None:
    folder = tmp_path / "runs.db"
    folder.mkdir()
    assert_refused(target, folder, "not a regular file")


def test_row_count_limit(target: Engine, valid_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The real limit is 10,000 runs; lowering it shows the check without a huge file.
    monkeypatch.setattr(share_source, "MAX_RUNS", 2)
    assert_refused(target, valid_file, "table 'runs' has 4 rows; the limit is 2")


def test_damaged_page_fails_quick_check(target: Engine, valid_file: Path, tmp_path: Path) -> None:
    data = bytearray(valid_file.read_bytes())
    page = 4096
    data[page : 2 * page] = b"\xff" * page  # page 2: a b-tree page full of nonsense
    path = tmp_path / "damaged.db"
    path.write_bytes(bytes(data))
    assert_refused(target, path, "refused")


# ---------------------------------------------------------------------------------------------
# Another application's database, or not gradscope's schema
# ---------------------------------------------------------------------------------------------


def test_another_applications_database(target: Engine, tmp_path: Path) -> None:
    path = tmp_path / "browser_history.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE moz_places (id INTEGER PRIMARY KEY, url TEXT)")
    conn.execute("INSERT INTO moz_places (url) VALUES ('https://example.org')")
    conn.commit()
    conn.close()
    assert_refused(target, path, "not a gradscope database", "moz_places")


def test_newer_schema_version(target: Engine, valid_file: Path, tmp_path: Path) -> None:
    path = tampered(valid_file, tmp_path, "UPDATE alembic_version SET version_num='0042_future'")
    assert_refused(target, path, "0042_future", SCHEMA_REVISION, "newer gradscope")


def test_missing_table_and_column(target: Engine, valid_file: Path, tmp_path: Path) -> None:
    path = tampered(valid_file, tmp_path, "DROP TABLE layer_stats")
    assert_refused(target, path, "table 'layer_stats' is missing")
    path = tampered(
        valid_file, tmp_path, "ALTER TABLE epoch_metrics DROP COLUMN test_acc", name="col.db"
    )
    assert_refused(target, path, "table 'epoch_metrics' lacks column(s): test_acc")


def test_trigger_that_would_write_elsewhere(
    target: Engine, valid_file: Path, tmp_path: Path
) -> None:
    path = tampered(
        valid_file,
        tmp_path,
        "CREATE TRIGGER steal AFTER INSERT ON runs BEGIN DELETE FROM epoch_metrics; END",
    )
    assert_refused(target, path, "trigger ('steal')")


def test_virtual_table(target: Engine, valid_file: Path, tmp_path: Path) -> None:
    path = tampered(valid_file, tmp_path, "CREATE VIRTUAL TABLE notes USING fts5(body)")
    assert_refused(target, path, "virtual table ('notes')")


def test_view(target: Engine, valid_file: Path, tmp_path: Path) -> None:
    path = tampered(valid_file, tmp_path, "CREATE VIEW runs_view AS SELECT * FROM runs")
    assert_refused(target, path, "view ('runs_view')")


# ---------------------------------------------------------------------------------------------
# Values of the wrong type or range
# ---------------------------------------------------------------------------------------------


def unconstrained(table: str) -> str:
    """SQL that rebuilds a table without its constraints (NOT NULL, keys), as a hostile
    sender's tool might, so that values the schema forbids can be stored."""
    return (
        f"CREATE TABLE loose AS SELECT * FROM {table}; DROP TABLE {table}; "
        f"ALTER TABLE loose RENAME TO {table}"
    )


BAD_VALUES = [
    ("UPDATE epoch_metrics SET train_loss = 'abc' WHERE epoch = 2", "train_loss must be a number"),
    ("UPDATE layer_stats SET layer = 'x' WHERE layer = 0", "layer must be an integer"),
    ("UPDATE runs SET name = printf('%.100000c', 'x')", "100,000 characters long; at most 200"),
    (
        "PRAGMA ignore_check_constraints=ON; UPDATE runs SET status = 'hacked'",
        "status 'hacked' is not one of",
    ),
    ("UPDATE runs SET id = 'not-a-uuid' WHERE name = 'nonfinite'", "id must be a UUID"),
    ('UPDATE runs SET config = \'{"arch": "transformer"}\'', "not a valid run configuration"),
    ("UPDATE runs SET config = 'not json'", "config is not valid JSON"),
    ("UPDATE runs SET depth = 60", "but its config says"),
    ("UPDATE runs SET epochs_done = 99", "epochs_done 99 is outside"),
    ("UPDATE runs SET created_at = 'yesterday'", "created_at is not a date and time"),
    ("UPDATE runs SET cancel_requested = 7", "cancel_requested must be 0 or 1"),
    ("UPDATE epoch_metrics SET epoch = 0 WHERE epoch = 1", "epoch 0 is outside"),
    ("UPDATE layer_stats SET layer = 50 WHERE layer = 0", "layer 50 is outside"),
    ("UPDATE layer_stats SET grad_hist = x'00'", "grad_hist is 1 bytes; it must be 232"),
    ("UPDATE decision_grids SET probs = x'0000'", "probs is 2 bytes"),
    ("UPDATE run_points SET n = n + 1", "points take"),
    ("UPDATE run_layers SET kind = 'attention'", "kind 'attention' is not one of"),
    (
        "UPDATE epoch_metrics SET run_id = '11111111-1111-4111-8111-111111111111' "
        "WHERE run_id = (SELECT id FROM runs WHERE name = 'nonfinite')",
        "belongs to no run",
    ),
    ("UPDATE runs SET error = 'x' || char(0) || 'y'", "NUL character"),
    ("UPDATE runs SET seed = 9223372036854775807", "seed is out of range"),
    (
        f"{unconstrained('decision_grids')}; UPDATE decision_grids SET x_min = NULL",
        "x_min must have a value",
    ),
    (
        f"{unconstrained('epoch_metrics')}; INSERT INTO epoch_metrics "
        "SELECT * FROM epoch_metrics WHERE epoch = 1",
        "appears twice (duplicate key)",
    ),
    ("UPDATE runs SET worker = CAST(x'80ff' AS TEXT)", "worker is not valid UTF-8 text"),
    ("UPDATE runs SET name = 'a' || char(10) || 'b'", "control characters"),
]


@pytest.mark.parametrize(("sql", "phrase"), BAD_VALUES, ids=[p for _, p in BAD_VALUES])
def test_wrong_values_are_refused(
    target: Engine, valid_file: Path, tmp_path: Path, sql: str, phrase: str
) -> None:
    path = tampered(valid_file, tmp_path, sql)
    refused = assert_refused(target, path, phrase)
    assert refused.problems  # each names the table and the run or row
    assert all(p.split()[0] in (*TABLE_ORDER, "(stopped") for p in refused.problems)


def test_one_message_per_bad_run(target: Engine, valid_file: Path, tmp_path: Path) -> None:
    long_name = "UPDATE runs SET name = printf('%.5000c', 'x') WHERE name = 'seed relu'"
    refused = assert_refused(target, tampered(valid_file, tmp_path, long_name), "5,000 char")
    assert len(refused.problems) == 1  # not one more for each of its rows


def test_oversized_value_is_refused_by_sqlite_itself(
    target: Engine, valid_file: Path, tmp_path: Path
) -> None:
    path = tampered(valid_file, tmp_path, "UPDATE runs SET error = zeroblob(20000000)")
    assert_refused(target, path, "string or blob too big")


def test_wal_mode_file_is_fine(target: Engine, valid_file: Path, tmp_path: Path) -> None:
    path = tampered(valid_file, tmp_path, "PRAGMA journal_mode=WAL")
    for leftover in tmp_path.glob("bad.db-*"):
        leftover.unlink()
    report = import_file(target, path)
    assert len(report.added) == 4
    assert path.read_bytes()[18:20] == b"\x02\x02"  # the sender's file is never modified


def test_cli_refusal_is_a_message_not_a_traceback(
    target: Engine, valid_file: Path, tmp_path: Path
) -> None:
    path = tampered(valid_file, tmp_path, "UPDATE alembic_version SET version_num='0042_future'")
    before = full_dump(target)
    result = CliRunner().invoke(app, ["import", str(path), "--db", str(target.url.database)])
    assert result.exit_code == 2
    assert "error:" in result.output and "0042_future" in result.output
    assert "Traceback" not in result.output
    assert full_dump(target) == before


# ---------------------------------------------------------------------------------------------
# Hypothesis: mutated valid files are imported validly or refused cleanly
# ---------------------------------------------------------------------------------------------


def check_import(template: Path, path: Path, folder: Path) -> None:
    """The property: import succeeds with valid data, or is refused with the target unchanged."""
    target = fresh_target(template, folder)
    try:
        before = full_dump(target)
        try:
            report = import_file(target, path)
        except ImportRefused as exc:
            assert "unexpected" not in str(exc), str(exc)  # a gap in the checks, not a refusal
            event(f"refused: {exc.problems[0].split(':')[0][:40]}")
            assert full_dump(target) == before
            return
        event(f"accepted, {len(report.added)} added")
        # Accepted: each added run reads back, and importing again recognises every run.
        for run in report.added:
            assert run_document(target, run.id)["id"] == run.id
        again = import_file(target, path)
        assert again.added == again.conflicting == ()
        assert len(again.already_present) == len(report.added) + len(report.already_present)
    finally:
        target.dispose()


SETTINGS = settings(
    # Bounded for the suite; SHARE_FUZZ_EXAMPLES=1000 for a longer hunt.
    max_examples=int(os.environ.get("SHARE_FUZZ_EXAMPLES", "30")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@SETTINGS
@pytest.mark.slow  # many generated files: seconds
@given(
    flips=st.lists(
        st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=8
    ),
    cut=st.one_of(st.none(), st.floats(0, 1)),
)
def test_mutated_bytes(
    valid_file: Path,
    target_template: Path,
    flips: list[tuple[float, int]],
    cut: float | None,
) -> None:
    data = bytearray(valid_file.read_bytes())
    for where, byte in flips:
        data[int(where * len(data))] = byte
    if cut is not None:
        data = data[: int(cut * len(data))]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mutated.db"
        path.write_bytes(bytes(data))
        check_import(target_template, path, Path(tmp))


COLUMNS = [(name, c.name) for name in TABLE_ORDER for c in TABLES[name].columns]
ANY_VALUE = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=300),
    st.binary(max_size=300),
    st.sampled_from(["completed", "queued", "{}", "2026-01-01 00:00:00", "relu", "output"]),
)


@SETTINGS
@pytest.mark.slow  # many generated files: seconds
@given(
    changes=st.lists(
        st.tuples(st.sampled_from(COLUMNS), st.integers(0, 200), ANY_VALUE),
        min_size=1,
        max_size=3,
    )
)
def test_mutated_rows(
    loose_file: Path, target_template: Path, changes: list[tuple[tuple[str, str], int, object]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mutated.db"
        shutil.copy(loose_file, path)
        conn = sqlite3.connect(path)
        try:
            for (table, column), row, value in changes:
                count = conn.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
                if not count:
                    continue  # a table the valid file leaves empty has no row to change
                conn.execute(
                    f'UPDATE "{table}" SET "{column}" = ? WHERE rowid = '
                    f'(SELECT rowid FROM "{table}" LIMIT 1 OFFSET ?)',
                    (value, row % count),
                )
            conn.commit()
        finally:
            conn.close()
        check_import(target_template, path, Path(tmp))
