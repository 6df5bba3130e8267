"""Export, import and merge of run databases: round trips, idempotence, conflicts, CLI."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import stat
import threading
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
from share_helpers import add_nonfinite_run, content, full_dump
from sqlalchemy import Engine, event, text, update
from typer.testing import CliRunner

from gradscope.cli import app
from gradscope.db.engine import SCHEMA_REVISION, make_engine
from gradscope.db.epoch_writes import EpochWriter
from gradscope.db.errors import StorageError
from gradscope.db.models import EpochMetricModel, RunModel
from gradscope.db.share.base import ImportRefused, ShareError
from gradscope.db.share.export import export_runs, export_runs_bytes, select_run_ids
from gradscope.db.share.importing import import_bytes, import_file
from gradscope.db.share.report import ImportReport
from gradscope.db.share.table_files import export_tables, export_tables_zip
from gradscope.db.transactions import orm, transaction
from gradscope.vocab.config import make_config
from gradscope.vocab.records import RunSpec

cli = CliRunner()


@pytest.fixture
def source(seeded_db: Path) -> Engine:
    """The seeded runs plus one run full of NaN and infinities."""
    engine = make_engine(str(seeded_db))
    add_nonfinite_run(engine)
    yield engine
    engine.dispose()


def all_ids(engine: Engine) -> list[str]:
    return select_run_ids(engine)


def export_all(engine: Engine, path: Path) -> Path:
    export_runs(engine, all_ids(engine), path)
    return path


def run_status_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(text("SELECT status, count(*) FROM runs GROUP BY status")).all()
    return dict(rows)


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


def test_export_writes_a_standalone_stamped_file(source: Engine, tmp_path: Path) -> None:
    (tmp_path / "share").mkdir()
    out = export_all(source, tmp_path / "share" / "runs.db")
    # A plain file to send: rollback journal, nothing beside it, no temporary left over.
    assert [p.name for p in (tmp_path / "share").iterdir()] == ["runs.db"]
    with sqlite3.connect(out) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [
            (SCHEMA_REVISION,)
        ]
    conn.close()
    exported = make_engine(str(out))
    try:
        assert content(exported) == content(source)
    finally:
        exported.dispose()


def test_exported_file_opens_with_the_cli(source: Engine, tmp_path: Path) -> None:
    out = tmp_path / "shared.db"
    result = cli.invoke(app, ["export", str(out), "--db", str(source.url.database)])
    assert result.exit_code == 0, result.output
    assert "exported 4 run(s)" in result.output
    listed = cli.invoke(app, ["runs", "--db", str(out), "--json"])
    assert listed.exit_code == 0, listed.output
    names = sorted(r["name"] or "" for r in json.loads(listed.output))
    assert names == ["nonfinite", "seed relu", "seed resnet", "seed sigmoid"]


def test_export_refuses_to_overwrite_without_force(source: Engine, tmp_path: Path) -> None:
    out = tmp_path / "shared.db"
    out.write_text("precious")
    ids = all_ids(source)
    with pytest.raises(ShareError, match="already exists; pass --force"):
        export_runs(source, ids, out)
    assert out.read_text() == "precious"
    result = cli.invoke(app, ["export", str(out), "--db", str(source.url.database)])
    assert result.exit_code == 2
    assert out.read_text() == "precious"
    export_runs(source, ids[:1], out, force=True)
    assert len(select_run_ids(make_engine(str(out)))) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_export_refuses_the_database_it_reads(source: Engine) -> None:
    path = Path(source.url.database)
    before = path.stat().st_size
    with pytest.raises(ShareError, match="database being exported"):
        export_runs(source, all_ids(source), path, force=True)
    assert path.stat().st_size == before
    assert len(all_ids(source)) == 4


def test_failed_export_leaves_nothing(source: Engine, tmp_path: Path) -> None:
    out = tmp_path / "out" / "runs.db"
    out.parent.mkdir()
    with pytest.raises(ShareError, match="vanished"):
        export_runs(source, [*all_ids(source), "00000000-0000-4000-8000-000000000000"], out)
    assert list(out.parent.iterdir()) == []


def test_choosing_runs_by_prefix_status_and_sweep(source: Engine, tmp_path: Path) -> None:
    ids = all_ids(source)
    with transaction(source) as conn, orm(conn) as s:
        s.execute(
            update(RunModel)
            .where(RunModel.id.in_(ids[:2]))
            .values(sweep_id="5eed0000-0000-4000-8000-000000000001", sweep_name="depths")
        )
    assert select_run_ids(source, [ids[2][:8]]) == [ids[2]]
    assert select_run_ids(source, statuses=["diverged"]) == [ids[3]]
    assert select_run_ids(source, sweep="depths") == ids[:2]
    assert select_run_ids(source, sweep="5eed0000") == ids[:2]
    assert select_run_ids(source, [ids[0][:6]], sweep="depths") == ids[:1]
    with pytest.raises(ShareError, match="unknown status"):
        select_run_ids(source, statuses=["finished"])
    with pytest.raises(ShareError, match="no runs in a sweep"):
        select_run_ids(source, sweep="widths")

    out = tmp_path / "sweep.db"
    db = str(source.url.database)
    result = cli.invoke(app, ["export", str(out), "--db", db, "--sweep", "depths", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["runs"] == ids[:2]
    result = cli.invoke(app, ["export", str(tmp_path / "x.db"), "--db", db, "--status", "queued"])
    assert result.exit_code == 2 and "no runs match" in result.output
    assert not (tmp_path / "x.db").exists()


# ---------------------------------------------------------------------------------------------
# Import: round trips, idempotence, conflicts
# ---------------------------------------------------------------------------------------------


def assert_nonfinite_kept(engine: Engine) -> None:
    """The non-finite run's values came through: +inf, -inf, and NaN (stored as NULL)."""
    with engine.connect() as conn:
        run_id = conn.execute(text("SELECT id FROM runs WHERE name = 'nonfinite'")).scalar_one()
        epoch = conn.execute(
            text("SELECT train_loss, test_loss FROM epoch_metrics WHERE run_id = :r AND epoch = 1"),
            {"r": run_id},
        ).one()
        stat = conn.execute(
            text(
                "SELECT grad_norm, grad_mean_abs, grad_std, weight_norm FROM layer_stats "
                "WHERE run_id = :r AND epoch = 2 AND layer = 0"
            ),
            {"r": run_id},
        ).one()
        final = conn.execute(
            text("SELECT final_train_loss, final_test_loss FROM runs WHERE id = :r"), {"r": run_id}
        ).one()
    assert tuple(epoch) == (float("inf"), None)
    assert tuple(stat) == (float("inf"), float("-inf"), None, 5e-324)
    assert tuple(final) == (float("inf"), None)


def test_round_trip_sqlite_to_sqlite(source: Engine, tmp_path: Path, db_path: Path) -> None:
    shared = export_all(source, tmp_path / "shared.db")
    target = make_engine(str(db_path))
    report = import_file(target, shared)
    assert sorted(r.id for r in report.added) == sorted(all_ids(source))
    assert report.already_present == report.conflicting == report.refused == ()
    assert "added 4 run(s)" in report.summary
    assert content(target) == content(source)
    assert_nonfinite_kept(target)
    with target.connect() as conn:
        origins = conn.execute(text("SELECT source_file, imported_at FROM runs")).all()
    assert {o[0] for o in origins} == {"shared.db"}
    assert all(o[1] is not None for o in origins)


def test_importing_twice_adds_nothing(source: Engine, tmp_path: Path, db_path: Path) -> None:
    shared = export_all(source, tmp_path / "shared.db")
    target = make_engine(str(db_path))
    import_file(target, shared)
    before = full_dump(target)
    again = import_file(target, shared)
    assert again.added == ()
    assert sorted(r.id for r in again.already_present) == sorted(all_ids(source))
    assert again.conflicting == ()
    assert full_dump(target) == before


def test_conflicting_run_is_skipped_and_reported(
    source: Engine, tmp_path: Path, db_path: Path
) -> None:
    ids = all_ids(source)
    first = export_runs(source, ids[:2], tmp_path / "first.db").path
    target = make_engine(str(db_path))
    import_file(target, first)
    # Here, run 0 gets different content (one epoch's loss) than in the file.
    with transaction(target) as conn, orm(conn) as s:
        s.execute(
            update(EpochMetricModel)
            .where(EpochMetricModel.run_id == ids[0], EpochMetricModel.epoch == 2)
            .values(train_loss=123.0)
        )
    before = full_dump(target)
    everything = export_all(source, tmp_path / "all.db")
    report = import_file(target, everything)
    assert [r.id for r in report.conflicting] == [ids[0]]
    assert "different content" in report.conflicting[0].reason
    assert [r.id for r in report.already_present] == [ids[1]]
    assert sorted(r.id for r in report.added) == sorted(ids[2:])
    assert f"conflicting: {ids[0][:8]}" in report.summary
    after = full_dump(target)
    assert after["epoch_metrics"] != before["epoch_metrics"]  # the new runs' epochs arrived
    with target.connect() as conn:
        kept = conn.execute(
            text("SELECT train_loss FROM epoch_metrics WHERE run_id = :r AND epoch = 2"),
            {"r": ids[0]},
        ).scalar_one()
    assert kept == 123.0


def test_a_status_change_is_a_conflict(source: Engine, tmp_path: Path, db_path: Path) -> None:
    ids = all_ids(source)
    shared = export_all(source, tmp_path / "shared.db")
    target = make_engine(str(db_path))
    import_file(target, shared)
    with transaction(target) as conn, orm(conn) as s:
        s.execute(update(RunModel).where(RunModel.id == ids[1]).values(status="failed"))
    report = import_file(target, shared)
    assert [r.id for r in report.conflicting] == [ids[1]]
    assert run_status_counts(target)["failed"] == 1


def test_dry_run_writes_nothing(source: Engine, tmp_path: Path, db_path: Path) -> None:
    shared = export_all(source, tmp_path / "shared.db")
    target = make_engine(str(db_path))
    add_nonfinite_run(target, name="already here")
    before = full_dump(target)
    report = import_file(target, shared, dry_run=True)
    assert report.dry_run and len(report.added) == 4
    assert "would add 4 run(s)" in report.summary
    assert full_dump(target) == before
    result = cli.invoke(app, ["import", str(shared), "--db", str(db_path), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.output)["added"]) == 4
    assert full_dump(target) == before


def test_unfinished_runs_are_refused_the_rest_imported(
    source: Engine, tmp_path: Path, db_path: Path
) -> None:
    store = EpochWriter(source)
    cfg = make_config({"depth": 2, "width": 4, "epochs": 2}).model_dump()
    queued = store.create_run(RunSpec(cfg, name="waiting"))
    running = store.create_run(RunSpec(cfg, name="busy"), status="running")
    shared = export_all(source, tmp_path / "shared.db")
    target = make_engine(str(db_path))
    report = import_file(target, shared)
    assert sorted(r.id for r in report.refused) == sorted([queued, running])
    assert all("still" in r.reason for r in report.refused)
    assert "still queued" in report.summary and "still running" in report.summary
    assert len(report.added) == 4
    assert run_status_counts(target) == {"completed": 3, "diverged": 1}


def test_an_export_names_the_runs_it_wrote_unfinished(source: Engine, tmp_path: Path) -> None:
    store = EpochWriter(source)
    cfg = make_config({"depth": 2, "width": 4, "epochs": 2}).model_dump()
    queued = store.create_run(RunSpec(cfg, name="waiting"))
    running = store.create_run(RunSpec(cfg, name="busy"), status="running")
    result = export_runs(source, all_ids(source), tmp_path / "api.db")
    # Two runs created within one millisecond tie on created_at: compare without order.
    assert sorted(result.unfinished) == sorted([queued, running])
    out = cli.invoke(app, ["export", str(tmp_path / "cli.db"), "--db", str(source.url.database)])
    assert out.exit_code == 0, out.output
    assert "note: 2 run(s) were still queued or running" in out.output
    finished = select_run_ids(source, statuses=["completed", "diverged"])
    only_done = ["export", str(tmp_path / "done.db"), "--db", str(source.url.database), "--json"]
    out = cli.invoke(app, [*only_done, *(arg for i in finished for arg in ("--run", i))])
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["unfinished"] == []


def sqlite_write_lock_is_free(path: Path) -> bool:
    """Whether another connection could start writing to the SQLite file at once now."""
    other = sqlite3.connect(path, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")
        other.rollback()
        return True
    except sqlite3.OperationalError as exc:
        assert "locked" in str(exc)
        return False
    finally:
        other.close()


def test_an_import_reads_unlocked_and_writes_in_locked_batches(
    source: Engine, tmp_path: Path, db_path: Path
) -> None:
    # Issue 14: comparing the file with the target takes no lock (a worker writes meanwhile);
    # each write batch takes the lock before it re-checks which runs are present.
    shared = export_all(source, tmp_path / "shared.db")
    target = make_engine(str(db_path))
    free_while_reading: list[bool] = []

    def on_execute(conn, cursor, statement, *_):  # noqa: ANN001, ANN202
        if statement.lstrip().upper().startswith("SELECT"):
            free_while_reading.append(sqlite_write_lock_is_free(db_path))

    event.listen(target, "before_cursor_execute", on_execute)
    report = import_file(target, shared)
    event.remove(target, "before_cursor_execute", on_execute)
    assert free_while_reading[0] is True  # classifying
    assert free_while_reading[-1] is False  # the batch's re-check, under the lock
    assert len(report.added) == 4
    assert sqlite_write_lock_is_free(db_path)
    # A dry run reads without blocking writers.
    free_while_reading.clear()
    event.listen(target, "before_cursor_execute", on_execute)
    assert len(import_file(target, shared, dry_run=True).already_present) == 4
    event.remove(target, "before_cursor_execute", on_execute)
    assert set(free_while_reading) == {True}
    target.dispose()


def test_an_import_that_meets_a_lock_retries_the_whole_transaction(
    source: Engine, tmp_path: Path, db_path: Path
) -> None:
    shared = export_all(source, tmp_path / "shared.db")
    target = make_engine(str(db_path))
    # No waiting on this engine: a writer holding the lock fails the import's BEGIN at once.
    event.listen(target, "connect", lambda dbapi, _: dbapi.execute("PRAGMA busy_timeout=0"))
    target.dispose()
    writer = sqlite3.connect(db_path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # a worker in the middle of recording an epoch
    begins: list[str] = []

    def on_execute(conn, cursor, statement, *_):  # noqa: ANN001, ANN202
        if statement.startswith("BEGIN"):
            begins.append(statement)
            if len(begins) == 2:  # the retry: the worker has committed meanwhile
                writer.execute("COMMIT")

    event.listen(target, "before_cursor_execute", on_execute)
    try:
        report = import_file(target, shared)
    finally:
        writer.close()
    assert begins == ["BEGIN IMMEDIATE", "BEGIN IMMEDIATE"]
    assert len(report.added) == 4
    assert content(target) == content(source)
    target.dispose()


def test_a_failure_while_writing_rolls_back_everything(
    source: Engine, tmp_path: Path, db_path: Path
) -> None:
    ids = all_ids(source)
    shared = export_all(source, tmp_path / "shared.db")
    target = make_engine(str(db_path))
    add_nonfinite_run(target, name="mine")
    # A stray row in the target (as a crashed tool might leave) that collides with the last
    # run's rows: that run's insert fails after the earlier runs' rows were written.
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA foreign_keys=OFF")
    conn.execute("INSERT INTO epoch_metrics (run_id, epoch) VALUES (?, 1)", (ids[-1],))
    conn.commit()
    conn.close()
    before = full_dump(target)
    with pytest.raises(StorageError, match="nothing was imported") as caught:
        import_file(target, shared)
    assert not isinstance(caught.value, ImportRefused)
    assert full_dump(target) == before


def test_import_bytes_and_export_bytes(source: Engine, db_path: Path) -> None:
    data = export_runs_bytes(source, all_ids(source)[:2])
    assert data[:16] == b"SQLite format 3\x00"
    target = make_engine(str(db_path))
    with pytest.raises(ImportRefused, match="the limit is 1,000"):
        import_bytes(target, data, "upload.db", max_bytes=1000)
    assert all_ids(target) == []
    report = import_bytes(target, data, "../../from alice.db")
    assert len(report.added) == 2
    with target.connect() as conn:
        assert conn.execute(text("SELECT DISTINCT source_file FROM runs")).scalar_one() == (
            "from alice.db"
        )


def test_cli_import_prints_the_report(source: Engine, tmp_path: Path, db_path: Path) -> None:
    shared = export_all(source, tmp_path / "shared.db")
    first = cli.invoke(app, ["import", str(shared), "--db", str(db_path)])
    assert first.exit_code == 0, first.output
    assert "added 4 run(s); 0 already present" in first.output
    second = cli.invoke(app, ["import", str(shared), "--db", str(db_path)])
    assert "added 0 run(s); 4 already present" in second.output


# ---------------------------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------------------------


@pytest.mark.postgres
def test_round_trip_through_postgresql(
    source: Engine, tmp_path: Path, pg_url: str, db_path: Path
) -> None:
    shared = export_all(source, tmp_path / "shared.db")
    pg = make_engine(pg_url)
    try:
        report = import_file(pg, shared)
        assert len(report.added) == 4
        assert content(pg) == content(source)
        assert_nonfinite_kept(pg)  # psycopg keeps +/-inf; NaN is NULL as on SQLite
        assert import_file(pg, shared).added == ()

        # PostgreSQL -> export -> SQLite: still identical.
        back = export_all(pg, tmp_path / "from_pg.db")
        target = make_engine(str(db_path))
        assert len(import_file(target, back).added) == 4
        assert content(target) == content(source)
        assert_nonfinite_kept(target)
        # And the PostgreSQL copy recognises the SQLite file's runs as the same content.
        assert len(import_file(pg, back).already_present) == 4
    finally:
        pg.dispose()


@pytest.mark.slow  # several importers at once
def test_imports_of_one_file_at_once_add_each_run_once(
    source: Engine, tmp_path: Path, database: str
) -> None:
    # Teammates importing the same file together: one import adds the runs, the others find
    # them present; none fails on a duplicate id.
    shared = export_all(source, tmp_path / "shared.db")
    url = database  # SQLite file or PostgreSQL (the `database` fixture marks that half)
    target = make_engine(url)
    importers = 4
    start = threading.Barrier(importers)

    def import_when_all_ready() -> ImportReport:
        start.wait()
        return import_file(target, shared)

    try:
        with ThreadPoolExecutor(max_workers=importers) as pool:
            reports = list(pool.map(lambda _: import_when_all_ready(), range(importers)))
        added = sorted(len(r.added) for r in reports)
        assert added == [0] * (importers - 1) + [4]
        assert all(len(r.already_present) == 4 for r in reports if not r.added)
        assert content(target) == content(source)
    finally:
        target.dispose()


# ---------------------------------------------------------------------------------------------
# Tables for pandas
# ---------------------------------------------------------------------------------------------


def test_csv_and_parquet_tables(source: Engine, tmp_path: Path) -> None:
    ids = all_ids(source)
    csv_paths = export_tables(source, ids, tmp_path / "csv")
    assert [p.name for p in csv_paths] == ["runs.csv", "epochs.csv", "layers.csv", "metrics.csv"]
    runs = pd.read_csv(csv_paths[0])
    epochs = pd.read_csv(csv_paths[1])
    layers = pd.read_csv(csv_paths[2])
    assert sorted(runs["id"]) == sorted(ids)
    assert len(epochs) == 3 * 4 + 2  # seeded runs: 4 epochs each; the non-finite run: 2
    assert len(layers) == 3 * 4 * 7 + 2 * 3  # depth 6 -> 7 layers; depth 2 -> 3
    bad = layers[layers["run_name"] == "nonfinite"]
    assert (bad["grad_mean_abs"] == float("-inf")).all()
    assert bad["grad_std"].isna().all()
    assert set(bad["kind"]) == {"hidden", "output"}

    parquet_paths = export_tables(source, ids, tmp_path / "pq", "parquet")
    exact = pd.read_parquet(parquet_paths[2])
    assert exact["grad_norm"].isin([float("inf")]).sum() == 2
    assert exact[exact["run_name"] == "nonfinite"]["grad_std"].isna().all()
    assert exact["grad_norm"].notna().sum() == len(exact)
    with pytest.raises(ShareError, match="already has runs.parquet"):
        export_tables(source, ids, tmp_path / "pq", "parquet")

    archive = zipfile.ZipFile(io.BytesIO(export_tables_zip(source, ids[:1])))
    assert archive.namelist() == ["runs.csv", "epochs.csv", "layers.csv", "metrics.csv"]
    assert len(pd.read_csv(archive.open("epochs.csv"))) == 4

    result = cli.invoke(
        app,
        [
            "export-csv",
            str(tmp_path / "cli"),
            "--db",
            str(source.url.database),
            "--format",
            "parquet",
        ],
    )
    assert result.exit_code == 0, result.output
    assert len(pd.read_parquet(tmp_path / "cli" / "runs.parquet")) == 4


def test_table_files_get_the_usual_permissions(source: Engine, tmp_path: Path) -> None:
    # Files to hand on: readable by others as any file the user makes, not private (0600).
    previous = os.umask(0o022)
    try:
        paths = export_tables(source, all_ids(source), tmp_path / "csv")
    finally:
        os.umask(previous)
    assert {stat.S_IMODE(p.stat().st_mode) for p in paths} == {0o644}
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == sorted(p.name for p in paths)


def test_share_commands_have_help() -> None:
    for command in ("export", "import", "export-csv"):
        result = cli.invoke(app, [command, "--help"])
        assert result.exit_code == 0
        assert "--db" in result.output
