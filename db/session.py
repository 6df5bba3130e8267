"""Transactions: one `session_scope()` that commits, rolls back, closes and explains failures."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine
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
