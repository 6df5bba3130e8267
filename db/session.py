"""Transactions that commit, roll back, close and explain failures, and the one place driver
errors become StorageError.

- `storage_errors(what)`: the error mapper. Any SQLAlchemyError raised inside becomes a
  StorageError reading "<what>: <driver message>", chained to the original (so retry logic can
  still see the OperationalError). Every module that talks to the database uses this instead of
  wrapping errors by hand.
- `transaction(engine)`: the transaction helper. A Core connection whose statements commit as one
  transaction, or roll back on any error. The run lifecycle, the recording writes, the frames
  and share use it; Core statements skip the ORM's per-call set-up (recording an epoch costs
  about half as much as through a Session).
- `session_scope(engine)`: the same promise for ORM sessions (queries that load models).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from gradscope.db.errors import StorageError
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session


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
def transaction(engine: Engine, what: str = "database error") -> Iterator[Connection]:
    """A connection whose statements commit as one transaction, or roll back on any error."""
    with storage_errors(what), engine.begin() as conn:
        yield conn


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session whose work commits as one transaction, or rolls back on any error."""
    with storage_errors(), Session(engine, expire_on_commit=False) as session, session.begin():
        yield session
