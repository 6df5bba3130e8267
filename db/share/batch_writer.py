"""An import's writes: the runs to add, in short lock-first transactions.

An import writes in transactions of at most BATCH_ROWS rows (or BATCH_BYTES of blobs): on SQLite
each holds the write lock for a fraction of a second (see benchmarks/import_bench.py), so a
worker's epoch write never waits long behind an import, whatever the file's size. Each takes the
lock before its first read (`transaction(lock=IMPORT_LOCK)`: SQLite `BEGIN IMMEDIATE`, on
PostgreSQL an advisory lock that only imports take), so two imports of one file never both find
a run missing and both insert it; a lock conflict that still happens retries the whole batch.
"""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Engine, delete, insert

from gradscope.db.clock import now_expr
from gradscope.db.share.base import TABLES, chunks
from gradscope.db.share.digest import existing_ids
from gradscope.db.transactions import IMPORT_LOCK, transaction, with_retry

BATCH_ROWS = 5_000
BATCH_BYTES = 32 * 2**20
BATCH_PAUSE_S = 0.05


def _row_bytes(rows: list[dict[str, Any]]) -> int:
    """Roughly what rows cost in memory: their blobs plus ~200 bytes each."""
    return sum(200 + sum(len(v) for v in r.values() if isinstance(v, bytes)) for r in rows)


class BatchWriter:
    """Writes the runs to add in short transactions of at most BATCH_ROWS rows (or
    BATCH_BYTES), runs before their rows. Each batch re-checks, under the write lock, which
    of its runs another import added meanwhile and skips those. Remembers the longest
    transaction (the longest time the import held SQLite's write lock)."""

    def __init__(self, engine: Engine, source_file: str) -> None:
        self.engine, self.source_file = engine, source_file
        self.pending: list[tuple[str, list[dict[str, Any]]]] = []
        self.size = 0
        self.bytes = 0
        self.written: list[str] = []  # run ids committed by this import
        self.skipped: set[str] = set()  # added by someone else meanwhile
        self.longest_s = 0.0

    def add(self, table: str, rows: list[dict[str, Any]]) -> None:
        self.pending.append((table, rows))
        self.size += len(rows)
        self.bytes += _row_bytes(rows)
        if self.size >= BATCH_ROWS or self.bytes >= BATCH_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        started = time.monotonic()
        skipped, written = with_retry(self._transaction)
        self.skipped |= skipped
        self.written += written
        self.pending, self.size, self.bytes = [], 0, 0
        # SQLite's lock is not a queue: a writer waiting in busy_timeout polls (every 100 ms
        # at most) and would keep missing an import that takes the lock again at once. A
        # pause as long as the batch (at most BATCH_PAUSE_S) lets it in; it costs the import
        # up to half its speed on SQLite and nothing elsewhere.
        if self.engine.dialect.name == "sqlite":
            time.sleep(min(time.monotonic() - started, BATCH_PAUSE_S))

    def _transaction(self) -> tuple[set[str], list[str]]:
        started = time.monotonic()
        try:
            with transaction(self.engine, "writing a batch failed", lock=IMPORT_LOCK) as conn:
                new_runs = [r["id"] for t, rows in self.pending if t == "runs" for r in rows]
                skipped = self.skipped | existing_ids(conn, new_runs)
                now = now_expr(conn.dialect.name)
                for table, rows in self.pending:
                    key = "id" if table == "runs" else "run_id"
                    kept = [r for r in rows if r[key] not in skipped]
                    if not kept:
                        continue
                    if table == "runs":
                        conn.execute(insert(TABLES["runs"]).values(imported_at=now), kept)
                    else:
                        conn.execute(insert(TABLES[table]), kept)
        finally:
            self.longest_s = max(self.longest_s, time.monotonic() - started)
        return skipped - self.skipped, [r for r in new_runs if r not in skipped]

    def remove_written(self) -> None:
        """Delete the runs this import committed (their rows go with them: ON DELETE CASCADE),
        in short transactions too."""
        for chunk in chunks(self.written):
            with_retry(lambda chunk=chunk: self._delete(chunk))

    def _delete(self, chunk: list[str]) -> None:
        runs = TABLES["runs"]
        with transaction(self.engine, "removing written runs failed") as conn:
            conn.execute(delete(runs).where(runs.c.id.in_(chunk)))
