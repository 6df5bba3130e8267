"""What every part of sharing uses: the tables a run's content spans, a run on its way between
databases, id lists in chunks, and the two errors (a request that cannot be done, a refused file).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Column, Table

from gradscope.db.errors import StorageError
from gradscope.db.models import Base

CHUNK = 500  # ids per IN (...) list: well under every backend's parameter limit
# Parents first: the order rows are inserted in.
TABLE_ORDER = (
    "runs",
    "run_layers",
    "epoch_metrics",
    "run_metrics",
    "run_warnings",
    "layer_stats",
    "decision_grids",
    "run_points",
    "run_tags",
)
CHILD_TABLES = TABLE_ORDER[1:]
TABLES: dict[str, Table] = {name: Base.metadata.tables[name] for name in TABLE_ORDER}
# Tables keyed by a surrogate row id (autoincrement): the id is a database's, not the run's
# content, so it is neither copied (the target numbers its own rows) nor compared; such rows
# are read run by run in the file's id order (logging order, kept by the import) and may
# repeat (a value logged twice).
SURROGATE_ID = frozenset({"run_metrics", "run_warnings"})


def content_columns(name: str) -> list[Column]:
    """The columns a table's rows carry between databases (run_id first for every child)."""
    return [c for c in TABLES[name].columns if not (name in SURROGATE_ID and c.name == "id")]


def sort_keys(name: str) -> list[str]:
    """The columns a table's rows are ordered (and, without a surrogate id, keyed) by."""
    if name in SURROGATE_ID:
        return ["run_id", "id"]
    return [c.name for c in TABLES[name].primary_key.columns]


class ShareError(StorageError):
    """An export or import request that cannot be done as asked (the message says why)."""


class ImportRefused(StorageError):
    """The whole file was refused; nothing was written. `problems` lists each reason."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        shown = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} was refused, nothing was imported:\n{shown}")


@dataclass(frozen=True)
class SourceRun:
    """One run with its rows, every value checked and converted to Python types."""

    run: dict[str, Any]
    children: dict[str, list[dict[str, Any]]]

    @classmethod
    def bare(cls, run: dict[str, Any]) -> SourceRun:
        """The run's row, its child rows still to be added."""
        return cls(run, {t: [] for t in CHILD_TABLES})

    @property
    def id(self) -> str:
        return self.run["id"]


@dataclass(frozen=True)
class SourceFile:
    """What a checked file holds: its runs in file order, and its schema revision."""

    revision: str
    upgraded_from: str | None
    runs: list[SourceRun]  # run rows only: their children are streamed (`stream_children`)
    conn: sqlite3.Connection  # the checked private copy, open while the import copies it


def chunks(ids: Sequence[str]) -> Iterator[list[str]]:
    for start in range(0, len(ids), CHUNK):
        yield list(ids[start : start + CHUNK])


def sidecars(path: Path) -> tuple[Path, ...]:
    """The files SQLite may keep beside a database: a stale -wal would be replayed into it."""
    return tuple(Path(f"{path}-{end}") for end in ("wal", "shm", "journal"))


def rollback_journal(path: Path) -> None:
    """Make a file we wrote one self-contained file to hand on: rollback journal, no -wal
    beside it. Plain sqlite3: the journal mode cannot change inside a transaction."""
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
