"""The one way into the database: every read and every write is a `transaction()`.

- `transaction(engine, what, lock=…)`: a Core connection whose statements commit as one
  transaction, or roll back on any error; driver errors become StorageError("<what>: <reason>"),
  chained to the original (so `with_retry` can still see the OperationalError). `lock` takes the
  database's write lock before the first statement, so what the transaction reads is what it
  writes against: SQLite `BEGIN IMMEDIATE` (waiting out busy_timeout), PostgreSQL a
  transaction-scoped advisory lock named by the key (only writers of that kind take it).
- `orm(conn)`: an ORM session on a transaction's connection, for queries that load models.
- `with_retry(action)`: run one whole transaction again (jittered backoff) after a transient lock
  conflict: SQLite "database is locked", PostgreSQL deadlock or serialization failure.
- `storage_errors(what)`: the error mapper `transaction` uses.

Core statements skip the ORM's per-call set-up: recording an epoch costs about half as much as
through a Session. Nothing else opens a connection or a transaction (tests/test_transactions.py
reads the source to hold that). The exceptions, none of them a transaction on a database of ours:
- raw `sqlite3` on an untrusted file being imported, opened read-only and checked before
  SQLAlchemy sees it, and on an exported file once written, to switch its journal mode (which
  cannot change inside a transaction) (both gradscope.db.share); and the `creator` through which
  a read-only SQLite engine opens its file (gradscope.db.engine);
- `storage_errors` alone around `create_engine` in `make_engine`: building an engine touches no
  database, but a bad URL option is a driver error all the same.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session

from gradscope.db.errors import StorageError

T = TypeVar("T")
LOCK_RETRIES = 8
# PostgreSQL: deadlock_detected, serialization_failure. Both are safe to retry from scratch.
_RETRY_SQLSTATES = {"40P01", "40001"}

# Arbitrary constants naming PostgreSQL advisory locks: who serialises with whom.
SCHEMA_LOCK = 0x67726164  # creating a new database's schema
IMPORT_LOCK = 0x67736970  # imports of shared files (workers never take it)


@contextmanager
def storage_errors(what: str = "database error") -> Iterator[None]:
    """Turn driver errors raised inside into StorageError("<what>: <reason>")."""
    try:
        yield
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc)
        if "readonly database" in reason:
            reason = "the database is open read-only here; nothing was written"
        raise StorageError(f"{what}: {reason}") from exc


@contextmanager
def transaction(
    engine: Engine,
    what: str = "database error",
    *,
    lock: int | None = None,
    copies_tables: bool = False,
) -> Iterator[Connection]:
    """A connection whose statements commit as one transaction, or roll back on any error.
    `lock`: take the write lock first (SQLite) or the advisory lock with this key
    (PostgreSQL). `copies_tables` (a schema migration): on SQLite, foreign keys are off for
    the transaction and every reference is checked before it commits."""
    if not (copies_tables and engine.dialect.name == "sqlite"):
        with storage_errors(what), engine.begin() as conn:
            if lock is not None:
                take_write_lock(conn, lock)
            yield conn
        return
    # Alembic's batch mode changes a column by copying the table and dropping the old one;
    # with foreign keys on, that DROP deletes every child row (ON DELETE CASCADE): all the
    # runs' statistics. The pragma is a no-op inside a transaction: off before it begins, on
    # again after it ends (SQLite's own procedure, lang_altertable.html section 7).
    with storage_errors(what), engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
        conn.commit()
        try:
            with conn.begin():
                if lock is not None:
                    take_write_lock(conn, lock)
                yield conn
                broken = conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
                if broken:
                    raise StorageError(f"{what}: it would break references: {broken[:3]}")
        finally:
            conn.exec_driver_sql("PRAGMA foreign_keys=ON")
            conn.commit()


def take_write_lock(conn: Connection, key: int) -> None:
    """The lock-first step of `transaction(lock=key)`, before the transaction's first read."""
    if conn.dialect.name == "sqlite":
        # pysqlite opens its transaction lazily, before the first write; an explicit
        # BEGIN IMMEDIATE takes the write lock now (and makes DDL part of the transaction).
        if not conn.connection.dbapi_connection.in_transaction:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
    elif conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})


def orm(conn: Connection) -> Session:
    """An ORM session inside a transaction's connection (it never commits on its own)."""
    return Session(bind=conn, expire_on_commit=False)


def is_retryable(exc: BaseException) -> bool:
    """True for transient lock conflicts: SQLite "database is locked", PostgreSQL deadlocks."""
    cause = exc.__cause__ if isinstance(exc, StorageError) else exc
    if not isinstance(cause, OperationalError):
        return False
    if getattr(cause.orig, "sqlstate", None) in _RETRY_SQLSTATES:
        return True
    return "database is locked" in str(cause.orig) or "database table is locked" in str(cause.orig)


def with_retry(action: Callable[[], T], attempts: int = LOCK_RETRIES) -> T:
    """Run one whole transaction, again (with jittered backoff) when it hit a lock conflict."""
    delay = 0.02
    for attempt in range(attempts):
        try:
            return action()
        except StorageError as exc:
            if attempt == attempts - 1 or not is_retryable(exc):
                raise
            time.sleep(delay * (1 + random.random()))  # backoff between attempts, not a wait
            delay = min(delay * 2, 1.0)
    raise AssertionError("unreachable")
