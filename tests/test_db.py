"""Schema creation, the version gate, Alembic migrations, and non-finite numbers on both
backends."""

from __future__ import annotations

import math
import sqlite3

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from race_helpers import open_concurrently, switch_to_wal_concurrently
from sqlalchemy import create_engine, inspect, text

from gradscope.db import engine as db_engine
from gradscope.db.engine import KNOWN_REVISIONS, SCHEMA_REVISION, make_engine
from gradscope.db.epoch_writes import EpochWriter
from gradscope.db.errors import SchemaVersionError
from gradscope.db.migrate import head_revision, upgrade
from gradscope.db.models import Base
from gradscope.db.queries import run_document
from gradscope.vocab.config import make_config
from gradscope.vocab.records import EpochRecord, RunSpec


def test_schema_revision_is_alembic_head() -> None:
    assert head_revision() == SCHEMA_REVISION
    assert KNOWN_REVISIONS[-1] == SCHEMA_REVISION


def test_fresh_database_is_created_and_stamped(db_path) -> None:  # noqa: ANN001
    engine = make_engine(str(db_path))
    names = set(inspect(engine).get_table_names())
    assert {"runs", "run_layers", "epoch_metrics", "layer_stats", "alembic_version"} <= names
    with engine.connect() as conn:
        assert conn.execute(text("PRAGMA journal_mode")).scalar() == "wal"
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == (
            SCHEMA_REVISION
        )


@pytest.mark.slow  # several processes
def test_processes_creating_one_database_at_once_all_succeed(database: str) -> None:
    # A worker and a CLI command often open a fresh database together; one creates it.
    url = database  # SQLite file or PostgreSQL (the `database` fixture marks that half)
    assert open_concurrently(url) == []
    engine = make_engine(url)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalars().all() == [
            SCHEMA_REVISION
        ]
    engine.dispose()


@pytest.mark.slow  # forks 8 processes per round
def test_processes_switching_a_new_file_to_wal_together_all_succeed(tmp_path) -> None:  # noqa: ANN001
    # Without the retry, ~1 round in 6 had a process told "database is locked" at once
    # (SQLite 3.40, this machine), whatever busy_timeout said.
    assert switch_to_wal_concurrently(tmp_path, rounds=40) == []
    with sqlite3.connect(tmp_path / "wal0.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


class _LockedCursor:
    """Answers the WAL switch with `errors` first (as a colliding process would), then works."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors
        self.calls = 0

    def execute(self, sql: str) -> None:
        assert sql == "PRAGMA journal_mode=WAL"
        self.calls += 1
        if self.errors:
            raise sqlite3.OperationalError(self.errors.pop(0))


def test_the_wal_switch_retries_a_locked_file_and_nothing_else(monkeypatch) -> None:  # noqa: ANN001
    cursor = _LockedCursor(["database is locked", "database is locked"])
    db_engine._switch_to_wal(cursor)  # type: ignore[arg-type]
    assert cursor.calls == 3
    other = _LockedCursor(["disk I/O error"])
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        db_engine._switch_to_wal(other)  # type: ignore[arg-type]
    assert other.calls == 1
    # Still locked when busy_timeout is over: the error is raised, not retried forever.
    monkeypatch.setattr(db_engine, "SQLITE_BUSY_TIMEOUT_MS", 20)
    stuck = _LockedCursor(["database is locked"] * 1000)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        db_engine._switch_to_wal(stuck)  # type: ignore[arg-type]
    assert 1 < stuck.calls < 1000


def test_newer_schema_is_refused_naming_both_versions(db_path) -> None:  # noqa: ANN001
    make_engine(str(db_path)).dispose()
    with sqlite3.connect(db_path) as conn:
        conn.execute("UPDATE alembic_version SET version_num = '0099_future'")
    with pytest.raises(SchemaVersionError) as err:
        make_engine(str(db_path))
    assert "0099_future" in str(err.value) and SCHEMA_REVISION in str(err.value)


def test_foreign_database_is_refused(db_path) -> None:  # noqa: ANN001
    with sqlite3.connect(db_path) as conn:
        conn.execute("CREATE TABLE notes (body TEXT)")
    with pytest.raises(SchemaVersionError, match="not a gradscope database"):
        make_engine(str(db_path))


def _migrated_matches_models(url: str) -> None:
    engine = create_engine(url)
    before, after = upgrade(engine)
    assert (before, after) == (None, SCHEMA_REVISION)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == []
    make_engine(url).dispose()  # the gate accepts the migrated database
    engine.dispose()


def test_migrated_schema_matches_models_sqlite(db_path) -> None:  # noqa: ANN001
    _migrated_matches_models(f"sqlite:///{db_path}")


@pytest.mark.postgres
def test_migrated_schema_matches_models_postgres(pg_url: str) -> None:
    _migrated_matches_models(pg_url)


def _store_non_finite(url: str) -> None:
    engine = make_engine(url)
    store = EpochWriter(engine)
    cfg = make_config({"depth": 1, "epochs": 1}).model_dump()
    run_id = store.create_run(RunSpec(cfg), status="running")
    stats = [
        {
            "grad_norm": math.inf,
            "grad_mean_abs": -math.inf,
            "grad_std": math.nan,
            "grad_max_abs": 1e-45,
            "weight_norm": 0.0,
            "grad_hist": b"\x00" * 8,
        },
        {"grad_norm": 2.5},
    ]
    metrics = {"train_loss": math.nan, "train_acc": 0.5, "test_loss": math.inf}
    assert store.record_epoch(run_id, EpochRecord(1, metrics, stats)) is False
    doc = run_document(engine, run_id)
    first, second = doc["layer_stats"]
    assert first["grad_norm"] == math.inf and first["grad_mean_abs"] == -math.inf
    assert first["grad_std"] is None  # NaN is stored as NULL, read back as null/NaN
    assert first["grad_max_abs"] == pytest.approx(1e-45, rel=1e-6)
    assert second["grad_norm"] == 2.5 and second["update_ratio"] is None
    assert doc["epochs"][0]["train_loss"] is None and doc["epochs"][0]["test_loss"] == math.inf
    assert doc["epochs_done"] == 1


def test_non_finite_numbers_sqlite(db_path) -> None:  # noqa: ANN001
    _store_non_finite(str(db_path))


@pytest.mark.postgres
def test_non_finite_numbers_postgres(pg_url: str) -> None:
    _store_non_finite(pg_url)
