"""Transactions that commit, roll back, close and explain failures: `session_scope()` for ORM
sessions, `transaction()` for Core statements on a connection (the cheaper one, for writes on
the training path)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from db.errors import StorageError


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session whose work commits as one transaction, or rolls back on any error.

    Driver errors become StorageError with a readable message; other errors pass through.
    """
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except SQLAlchemyError as exc:
        session.rollback()
        raise StorageError(f"database error: {getattr(exc, 'orig', None) or exc}") from exc
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


@contextmanager
def transaction(engine: Engine) -> Iterator[Connection]:
    """A connection whose statements commit as one transaction, or roll back on any error.

    Core statements skip the ORM's per-call set-up: recording an epoch costs about half as
    much as through a Session. Driver errors become StorageError, as in session_scope().
    """
    try:
        with engine.begin() as conn:
            yield conn
    except SQLAlchemyError as exc:
        raise StorageError(f"database error: {getattr(exc, 'orig', None) or exc}") from exc
