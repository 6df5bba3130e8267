"""How non-finite numbers are stored: NaN as NULL on every backend, infinities as they are."""

from __future__ import annotations

import math


def to_db(value: float | None) -> float | None:
    """NaN becomes NULL (SQLite would do it anyway; PostgreSQL is made to agree)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def from_db(value: float | None) -> float:
    """NULL reads back as NaN."""
    return math.nan if value is None else float(value)
