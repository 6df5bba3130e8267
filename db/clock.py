"""The database's clock, so heartbeats from many machines compare against one time source."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import func, literal_column
from sqlalchemy.sql.elements import ColumnElement


def now_expr(dialect_name: str) -> ColumnElement:
    """A SQL expression for the database's current UTC time.

    SQLite: text in SQLAlchemy's own DATETIME format (microseconds, 6 digits) so stored values
    compare correctly as strings; PostgreSQL: now() (timestamptz).
    """
    if dialect_name == "sqlite":
        return literal_column("(strftime('%Y-%m-%d %H:%M:%f', 'now') || '000')")
    return func.now()


def as_utc(value: datetime | None) -> datetime | None:
    """Datetimes read back aware in UTC (SQLite hands back naive UTC values)."""
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
