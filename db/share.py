"""Sharing runs between databases: export chosen runs to a standalone SQLite file, import one.

Export writes a file at the current schema (Alembic-stamped, made by `make_engine`) through a
temporary file in the same folder that is renamed into place, so a failure leaves nothing
half-written. Import treats the file as hostile (see `gradscope.db.share_validate`), keeps run ids,
adds
only runs the target lacks, and reads and writes the target in ONE transaction: on any refusal
or error the target is exactly as before. On SQLite that transaction takes the write lock
before its first read (`BEGIN IMMEDIATE`), so what it found is what it writes against, and a
worker committing meanwhile waits for it (busy_timeout) rather than failing it; a lock
conflict that still happens retries the whole transaction (`gradscope.db.transactions.with_retry`).

Policy for runs that were still queued or running in the file: they are refused (reported with
the reason) and the file's finished runs are imported. Their rows are a snapshot of work in
progress elsewhere; imported as queued/running they would be claimed or reclaimed by this
database's workers, and their content would diverge from the file's.

Same content = same digest: `run_digest` hashes the run's config, status, epochs done, final
metrics and every recorded row (layers, epochs, layer statistics incl. histograms, decision
grids, test points), normalised by column type (NaN and NULL alike, floats exactly), computed
the same way for the file's rows and the target's.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Connection,
    DateTime,
    Engine,
    Float,
    Integer,
    LargeBinary,
    Table,
    delete,
    insert,
    or_,
    select,
    text,
)

from gradscope.db.clock import as_utc, now_expr
from gradscope.db.engine import make_engine
from gradscope.db.errors import StorageError
from gradscope.db.models import RunModel
from gradscope.db.queries import resolve_run_id
from gradscope.db.share_source import DEFAULT_MAX_IMPORT_BYTES, open_source
from gradscope.db.share_validate import (
    CHILD_TABLES,
    TABLE_ORDER,
    TABLES,
    ImportRefused,
    SourceFile,
    SourceRun,
    stream_children,
)
from gradscope.db.transactions import orm, storage_errors, transaction, with_retry
from gradscope.db.transactions import transaction as db_transaction
from gradscope.vocab.fields import FINISHED_STATUSES, RUN_STATUSES

__all__ = [
    "DEFAULT_MAX_IMPORT_BYTES",
    "ExportResult",
    "ImportRefused",
    "ImportReport",
    "ImportedRun",
    "ShareError",
    "export_runs",
    "export_runs_bytes",
    "import_bytes",
    "import_file",
    "run_digest",
    "select_run_ids",
]

CHUNK = 500  # ids per IN (...) list: well under every backend's parameter limit
# An import writes in transactions of at most this many rows (or bytes of blobs): on SQLite each
# holds the write lock for a fraction of a second (see benchmarks/import_bench.py), so a worker's
# epoch write never waits long behind an import, whatever the file's size.
BATCH_ROWS = 5_000
BATCH_BYTES = 32 * 2**20
BATCH_PAUSE_S = 0.05
# Annotations (name, notes, tags) are left out of the digest; see `_merge_annotations`.
ANNOTATION_TABLES = ("run_tags",)
DIGEST_RUN_COLUMNS = (
    "config",
    "status",
    "epochs_done",
    "final_train_loss",
    "final_train_acc",
    "final_test_loss",
    "final_test_acc",
    "final_pred_std",
)


class ShareError(StorageError):
    """An export or import request that cannot be done as asked (the message says why)."""


# ---------------------------------------------------------------------------------------------
# Choosing runs
# ---------------------------------------------------------------------------------------------


def select_run_ids(
    engine: Engine,
    run_ids: Sequence[str] = (),
    sweep: str | None = None,
    statuses: Sequence[str] = (),
) -> list[str]:
    """Ids of the runs matching every filter given (all runs when none), oldest first.

    `run_ids` may be unique prefixes; `sweep` is a sweep id, id prefix or sweep name.
    """
    bad = [s for s in statuses if s not in RUN_STATUSES]
    if bad:
        raise ShareError(f"unknown status {', '.join(bad)}; use one of {', '.join(RUN_STATUSES)}")
    stmt = select(RunModel.id).order_by(RunModel.created_at, RunModel.id)
    if run_ids:
        stmt = stmt.where(RunModel.id.in_({resolve_run_id(engine, r) for r in run_ids}))
    if sweep:
        sweep_match = or_(RunModel.sweep_name == sweep, RunModel.sweep_id == sweep)
        if len(sweep) >= 4:
            sweep_match = or_(sweep_match, RunModel.sweep_id.startswith(sweep, autoescape=True))
        stmt = stmt.where(sweep_match)
    if statuses:
        stmt = stmt.where(RunModel.status.in_(list(statuses)))
    with transaction(engine) as conn, orm(conn) as s:
        ids = list(s.scalars(stmt))
    if sweep and not ids:
        raise ShareError(f"no runs in a sweep named or with id {sweep!r} match")
    return ids


# ---------------------------------------------------------------------------------------------
# Reading runs from a database we trust (ours)
# ---------------------------------------------------------------------------------------------


def _chunks(ids: Sequence[str]) -> Iterable[list[str]]:
    for start in range(0, len(ids), CHUNK):
        yield list(ids[start : start + CHUNK])


def _plain(row: dict[str, Any]) -> dict[str, Any]:
    """Datetimes as aware UTC (PostgreSQL hands back the session's zone, SQLite naive UTC)."""
    return {k: as_utc(v) if hasattr(v, "tzinfo") else v for k, v in row.items()}


def read_runs(conn: Connection, run_ids: Sequence[str]) -> dict[str, SourceRun]:
    """The runs (with every recorded row) among `run_ids` that exist, keyed by id."""
    found: dict[str, SourceRun] = {}
    for chunk in _chunks(run_ids):
        runs = TABLES["runs"]
        for row in conn.execute(select(runs).where(runs.c.id.in_(chunk))).mappings():
            found[row["id"]] = SourceRun(_plain(dict(row)), {t: [] for t in CHILD_TABLES})
        for name in CHILD_TABLES:
            table = TABLES[name]
            for row in conn.execute(select(table).where(table.c.run_id.in_(chunk))).mappings():
                if row["run_id"] in found:  # rows whose run is gone are nobody's content
                    found[row["run_id"]].children[name].append(_plain(dict(row)))
    return found


# ---------------------------------------------------------------------------------------------
# Content digest
# ---------------------------------------------------------------------------------------------


def _normal(column_type: object, value: Any) -> Any:
    """One value in a form that is equal exactly when the stored values are the same."""
    if value is None:
        return None
    if isinstance(column_type, Float):
        number = float(value)
        # NaN is stored as NULL by design; -0.0 may come back as 0 from SQLite.
        return None if number != number else (number + 0.0).hex()
    if isinstance(column_type, LargeBinary):
        return hashlib.sha256(bytes(value)).hexdigest()
    if isinstance(column_type, JSON):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    if isinstance(column_type, Boolean):
        return bool(value)
    if isinstance(column_type, Integer):
        return int(value)
    if isinstance(column_type, DateTime):
        return as_utc(value).isoformat()
    return str(value)


def _normal_rows(table: Table, rows: list[dict[str, Any]], columns: Sequence[str]) -> list[list]:
    types = {c.name: c.type for c in table.columns}
    keys = [c.name for c in table.primary_key.columns if c.name != "run_id"]
    ordered = sorted(rows, key=lambda r: tuple(r[k] for k in keys))
    return [[_normal(types[c], r[c]) for c in columns] for r in ordered]


def run_digest(run: SourceRun) -> str:
    """sha256 of a run's content: config, status, results and every recorded row."""
    digest = hashlib.sha256()
    head = _normal_rows(TABLES["runs"], [run.run], DIGEST_RUN_COLUMNS)
    digest.update(json.dumps(head).encode())
    for name in CHILD_TABLES:
        if name in ANNOTATION_TABLES:
            continue  # what people wrote on a run is not its content: merged, not compared
        table = TABLES[name]
        columns = [c.name for c in table.columns if c.name != "run_id"]
        digest.update(f"\n{name}\n".encode())
        digest.update(json.dumps(_normal_rows(table, run.children[name], columns)).encode())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Export
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExportResult:
    path: Path
    run_ids: tuple[str, ...]
    rows: int  # rows written, all tables together
    bytes: int
    # Runs written while still queued or running: an import refuses them.
    unfinished: tuple[str, ...] = ()


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def _sqlite_path(engine: Engine) -> Path | None:
    if engine.dialect.name != "sqlite" or not engine.url.database:
        return None
    return Path(engine.url.database)


def _write_export(engine: Engine, run_ids: Sequence[str], path: Path) -> tuple[int, list[str]]:
    """Copy the runs into a new database at `path`; returns the number of rows written and
    the ids of runs written while still queued or running."""
    out = make_engine(str(path))  # creates the current schema, stamped with its revision
    rows = 0
    unfinished: list[str] = []
    try:
        with engine.connect() as src, out.begin() as dst:
            for chunk in _chunks(run_ids):
                found = read_runs(src, chunk)
                missing = [r for r in chunk if r not in found]
                if missing:
                    raise ShareError(f"run {missing[0]} vanished while it was being exported")
                runs = [found[r] for r in chunk]
                unfinished += [r.id for r in runs if r.run["status"] not in FINISHED_STATUSES]
                for name in TABLE_ORDER:
                    if name == "runs":
                        batch = [r.run for r in runs]
                    else:
                        batch = [row for r in runs for row in r.children[name]]
                    if batch:
                        dst.execute(insert(TABLES[name]), batch)
                        rows += len(batch)
    finally:
        out.dispose()
    # One self-contained file to send: rollback journal, no -wal/-shm beside it.
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=DELETE")
    conn.close()
    return rows, unfinished


def export_runs(
    engine: Engine, run_ids: Sequence[str], out_path: str | Path, *, force: bool = False
) -> ExportResult:
    """Write the runs (full ids) with everything recorded for them to a new SQLite file.

    Refuses an existing `out_path` unless `force`, and refuses to overwrite the database
    being exported. Written next to `out_path` under a temporary name, then renamed.
    """
    out = Path(out_path).expanduser().absolute()
    ids = list(dict.fromkeys(run_ids))
    if not ids:
        raise ShareError("no runs to export")
    if out.exists() and not force:
        raise ShareError(f"{out} already exists; pass --force to replace it")
    if out.is_dir():
        raise ShareError(f"{out} is a folder; give a file name such as runs.db")
    source = _sqlite_path(engine)
    if source is not None and (out == source.absolute() or _same_file(out, source)):
        raise ShareError(f"{out} is the database being exported; choose another file")
    if not out.parent.is_dir():
        raise ShareError(f"folder {out.parent} does not exist")
    # A fresh name (not mkstemp's pre-made 0600 file): SQLite creates it with the usual mode.
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        with storage_errors("export failed"):
            rows, unfinished = _write_export(engine, ids, tmp)
            _move_into_place(tmp, out, force)
    finally:
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm"), Path(f"{tmp}-journal")):
            leftover.unlink(missing_ok=True)
    return ExportResult(out, tuple(ids), rows, out.stat().st_size, tuple(unfinished))


def _move_into_place(tmp: Path, out: Path, force: bool) -> None:
    if force:
        # A stale -wal of the replaced file would be replayed into the new one: remove it.
        for stale in (Path(f"{out}-wal"), Path(f"{out}-shm"), Path(f"{out}-journal")):
            stale.unlink(missing_ok=True)
        os.replace(tmp, out)
        return
    try:
        os.link(tmp, out)  # atomic, and fails if someone created `out` meanwhile
    except FileExistsError:
        raise ShareError(f"{out} already exists; pass --force to replace it") from None
    except OSError:  # a filesystem without hard links
        if out.exists():
            raise ShareError(f"{out} already exists; pass --force to replace it") from None
        os.replace(tmp, out)


def export_runs_bytes(engine: Engine, run_ids: Sequence[str]) -> bytes:
    """The export file's bytes (for a download button)."""
    with tempfile.TemporaryDirectory(prefix="gradscope-export-") as tmp:
        result = export_runs(engine, run_ids, Path(tmp) / "runs.db")
        return result.path.read_bytes()


# ---------------------------------------------------------------------------------------------
# Import
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImportedRun:
    id: str
    name: str | None
    reason: str = ""  # why it was not added (empty for added runs)


@dataclass(frozen=True)
class ImportReport:
    """What an import did (or, with dry_run, would do), run by run."""

    source: str
    dry_run: bool
    schema: str
    upgraded_from: str | None
    added: tuple[ImportedRun, ...] = ()
    already_present: tuple[ImportedRun, ...] = ()
    conflicting: tuple[ImportedRun, ...] = ()
    refused: tuple[ImportedRun, ...] = field(default=())
    # The longest write transaction (on SQLite: the longest hold of the write lock), seconds.
    longest_write_s: float = 0.0
    # Already-present runs that gained tags, a name or notes from the file.
    annotated: tuple[ImportedRun, ...] = ()

    @property
    def summary(self) -> str:
        """One paragraph for people, then a line per run not added."""
        verb = "would add" if self.dry_run else "added"
        lines = [
            f"{self.source}: {verb} {len(self.added)} run(s); "
            f"{len(self.already_present)} already present; "
            f"{len(self.conflicting)} conflicting (skipped); {len(self.refused)} refused."
        ]
        if self.annotated:
            lines.append(f"{len(self.annotated)} present run(s) took tags, names or notes")
        if self.upgraded_from:
            lines.append(f"(the file's schema {self.upgraded_from} was upgraded in a copy)")
        for title, runs in (("conflicting", self.conflicting), ("refused", self.refused)):
            for r in runs:
                lines.append(f"  {title}: {r.id[:8]} {r.name or ''}: {r.reason}".rstrip())
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        def listed(runs: tuple[ImportedRun, ...]) -> list[dict[str, Any]]:
            return [{"id": r.id, "name": r.name, "reason": r.reason or None} for r in runs]

        return {
            "source": self.source,
            "dry_run": self.dry_run,
            "schema": self.schema,
            "upgraded_from": self.upgraded_from,
            "added": listed(self.added),
            "already_present": listed(self.already_present),
            "conflicting": listed(self.conflicting),
            "refused": listed(self.refused),
            "annotated": listed(self.annotated),
        }


# (to add, already present, conflicting, refused)
Classified = tuple[list[SourceRun], list[ImportedRun], list[ImportedRun], list[ImportedRun]]


def _with_children(checked: SourceFile, run_ids: Collection[str]) -> Iterator[SourceRun]:
    """The file's runs `run_ids` with all their rows, one run at a time (for digests)."""
    runs = {r.id: r for r in checked.runs}
    current: SourceRun | None = None
    for run_id, table, rows in stream_children(checked.conn, run_ids, BATCH_ROWS):
        if current is None or current.id != run_id:
            if current is not None:
                yield current
            current = SourceRun(runs[run_id].run, {t: [] for t in CHILD_TABLES})
        current.children[table].extend(rows)
    if current is not None:
        yield current


def _existing_ids(conn: Connection, ids: Sequence[str]) -> set[str]:
    runs = TABLES["runs"]
    found: set[str] = set()
    for chunk in _chunks(list(ids)):
        found.update(conn.execute(select(runs.c.id).where(runs.c.id.in_(chunk))).scalars())
    return found


def _classify(engine: Engine, checked: SourceFile) -> Classified:
    """(to add, already present, conflicting, refused) against the target's current rows.

    Reads only, without holding the write lock: the writes re-check which runs are present
    (another import may add them meanwhile). Runs present on both sides are compared by
    digest, one run's rows in memory at a time."""
    add: list[SourceRun] = []
    present: list[ImportedRun] = []
    conflicting: list[ImportedRun] = []
    refused: list[ImportedRun] = []
    with engine.connect() as conn:
        existing = _existing_ids(conn, [r.id for r in checked.runs])
        same: set[str] = set()
        digested: set[str] = set()
        for run in _with_children(checked, existing):
            digested.add(run.id)
            target = read_runs(conn, [run.id]).get(run.id)
            if target is not None and run_digest(target) == run_digest(run):
                same.add(run.id)
        for run_id in existing - digested:  # runs without child rows in the file
            run = next(r for r in checked.runs if r.id == run_id)
            target = read_runs(conn, [run_id]).get(run_id)
            if target is not None and run_digest(target) == run_digest(run):
                same.add(run_id)
    for run in checked.runs:
        entry = ImportedRun(run.id, run.run["name"])
        if run.id in existing:
            if run.id in same:
                present.append(entry)
            else:
                conflicting.append(
                    ImportedRun(
                        run.id,
                        run.run["name"],
                        "a run with this id is already here with different content; "
                        "kept this database's version",
                    )
                )
        elif run.run["status"] not in FINISHED_STATUSES:
            refused.append(
                ImportedRun(
                    run.id,
                    run.run["name"],
                    f"it was still {run.run['status']} in the file; import it once it has "
                    "finished (export it again then)",
                )
            )
        else:
            add.append(run)
    return add, present, conflicting, refused


def _merge_annotations(
    engine: Engine, checked: SourceFile, present: list[ImportedRun], *, write: bool
) -> list[ImportedRun]:
    """The conflict rule for runs already here with the same content (README, "Sharing"):
    tags are united; this database's name and notes are kept, the file's fill them only
    where this database has none. Returns the runs that gain something. One short
    transaction per chunk of runs."""
    ids = sorted({p.id for p in present})
    if not ids:
        return []
    from_file = {r.id: r for r in checked.runs if r.id in set(ids)}
    runs_t, tags_t = TABLES["runs"], TABLES["run_tags"]
    gained: list[ImportedRun] = []
    for chunk in _chunks(ids):
        marks = ", ".join("?" * len(chunk))
        # The checked private copy; its tags passed validation like every other row.
        file_tags: dict[str, list[str]] = {i: [] for i in chunk}
        for run_id, tag in checked.conn.execute(
            f"SELECT run_id, tag FROM run_tags WHERE run_id IN ({marks}) ORDER BY run_id, tag",
            chunk,
        ):
            file_tags[run_id].append(tag)

        def merge(chunk: list[str] = chunk, file_tags: dict = file_tags) -> list[ImportedRun]:
            found: list[ImportedRun] = []
            with db_transaction(engine, "merging names, notes and tags failed") as conn:
                if write:
                    _begin_import(conn, write=True)
                stmt = select(runs_t.c.id, runs_t.c.name, runs_t.c.notes).where(
                    runs_t.c.id.in_(chunk)
                )
                here = {row["id"]: dict(row) for row in conn.execute(stmt).mappings()}
                here_tags: dict[str, set[str]] = {i: set() for i in chunk}
                for run_id, tag in conn.execute(
                    select(tags_t.c.run_id, tags_t.c.tag).where(tags_t.c.run_id.in_(chunk))
                ):
                    here_tags[run_id].add(tag)
                for run_id in chunk:
                    source, mine = from_file[run_id], here.get(run_id)
                    if mine is None:  # deleted meanwhile: nothing to merge into
                        continue
                    fill = {
                        k: source.run.get(k)
                        for k in ("name", "notes")
                        if not mine[k] and source.run.get(k)
                    }
                    new_tags = [t for t in file_tags[run_id] if t not in here_tags[run_id]]
                    if not fill and not new_tags:
                        continue
                    found.append(ImportedRun(run_id, mine["name"] or source.run["name"]))
                    if write and fill:
                        conn.execute(runs_t.update().where(runs_t.c.id == run_id).values(**fill))
                    if write and new_tags:
                        conn.execute(
                            insert(tags_t), [{"run_id": run_id, "tag": t} for t in new_tags]
                        )
            return found

        gained += with_retry(merge)
    return gained


# An arbitrary constant naming the PostgreSQL advisory lock that serialises imports.
_IMPORT_LOCK_KEY = 0x67736970


def _begin_import(conn: Connection, *, write: bool) -> None:
    """Make one write batch a serialised unit, before its first read.

    SQLite: `BEGIN IMMEDIATE` takes the write lock at once, waiting for other writers
    (busy_timeout): no other import can insert the batch's runs between its check and its
    writes. PostgreSQL: writers take a transaction-scoped advisory lock, so two imports of one
    file do not both find its runs missing and both insert them; workers never take it.
    """
    if conn.dialect.name == "sqlite":
        if not conn.connection.dbapi_connection.in_transaction:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
    elif conn.dialect.name == "postgresql" and write:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _IMPORT_LOCK_KEY})


def _row_bytes(rows: list[dict[str, Any]]) -> int:
    """Roughly what rows cost in memory: their blobs plus ~200 bytes each."""
    return sum(200 + sum(len(v) for v in r.values() if isinstance(v, bytes)) for r in rows)


class _BatchWriter:
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
            with storage_errors("writing a batch failed"), self.engine.begin() as conn:
                _begin_import(conn, write=True)
                new_runs = [r["id"] for t, rows in self.pending if t == "runs" for r in rows]
                skipped = self.skipped | _existing_ids(conn, new_runs)
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
        runs = TABLES["runs"]
        for chunk in _chunks(self.written):
            with_retry(lambda chunk=chunk: self._delete(runs, chunk))

    def _delete(self, runs: Table, chunk: list[str]) -> None:
        with storage_errors("removing written runs failed"), self.engine.begin() as conn:
            conn.execute(delete(runs).where(runs.c.id.in_(chunk)))


def _write_runs(writer: _BatchWriter, checked: SourceFile, add: list[SourceRun]) -> None:
    """Stream the runs to add from the file into `writer`: each run's row, then its rows."""
    by_id = {r.id: r for r in add}
    queued: set[str] = set()

    def run_row(run: SourceRun) -> dict[str, Any]:
        # The file's own source_file/imported_at are replaced: this import is where they
        # came from.
        row = {k: v for k, v in run.run.items() if k != "imported_at"}
        return {**row, "source_file": writer.source_file}

    for run_id, table, rows in stream_children(checked.conn, by_id, BATCH_ROWS):
        if run_id not in queued:
            queued.add(run_id)
            writer.add("runs", [run_row(by_id[run_id])])
        writer.add(table, rows)
    rest = [run_row(r) for r in add if r.id not in queued]  # runs without any rows
    for start in range(0, len(rest), CHUNK):
        writer.add("runs", rest[start : start + CHUNK])
    writer.flush()


def import_file(
    engine: Engine,
    path: str | Path,
    dry_run: bool = False,
    *,
    max_bytes: int = DEFAULT_MAX_IMPORT_BYTES,
    source_name: str | None = None,
) -> ImportReport:
    """Merge a run database file into `engine`'s database. See the module docstring.

    Raises ImportRefused (a StorageError) when the file is refused as a whole (nothing was
    written); StorageError when the target fails while writing (the runs this import had
    written are removed again).
    """
    path = Path(path)
    source = source_name or path.name
    with open_source(path, source, max_bytes) as checked:
        with storage_errors(f"importing {source} failed, nothing was imported"):
            add, present, conflicting, refused = _classify(engine, checked)
        writer = _BatchWriter(engine, source[:500])
        if add and not dry_run:
            try:
                _write_runs(writer, checked, add)
            except StorageError as exc:
                _undo(writer, source, exc)
        # Names, notes and tags of runs already here merge (the rule: _merge_annotations).
        annotated = _merge_annotations(engine, checked, present, write=not dry_run)
    skipped = writer.skipped
    return ImportReport(
        source=source,
        dry_run=dry_run,
        schema=checked.revision,
        upgraded_from=checked.upgraded_from,
        added=tuple(ImportedRun(r.id, r.run["name"]) for r in add if r.id not in skipped),
        # Runs another import added while this one wrote are present now, with its content.
        already_present=(
            *present,
            *(ImportedRun(r.id, r.run["name"]) for r in add if r.id in skipped),
        ),
        conflicting=tuple(conflicting),
        refused=tuple(refused),
        longest_write_s=writer.longest_s,
        annotated=tuple(annotated),
    )


def _undo(writer: _BatchWriter, source: str, exc: StorageError) -> None:
    try:
        writer.remove_written()
    except StorageError as again:
        raise StorageError(
            f"importing {source} failed ({exc}); removing the {len(writer.written)} run(s) it "
            f"had written failed too ({again}): delete them or import the file again"
        ) from exc
    raise StorageError(f"importing {source} failed, nothing was imported: {exc}") from exc


def import_bytes(
    engine: Engine,
    data: bytes,
    filename: str,
    max_bytes: int = DEFAULT_MAX_IMPORT_BYTES,
    dry_run: bool = False,
) -> ImportReport:
    """`import_file` for an uploaded file's bytes; `filename` is what the runs remember."""
    name = Path(filename).name or "upload.db"
    if len(data) > max_bytes:
        raise ImportRefused(name, [f"the file is {len(data):,} bytes; the limit is {max_bytes:,}"])
    with tempfile.TemporaryDirectory(prefix="gradscope-upload-") as tmp:
        path = Path(tmp) / "upload.db"
        path.write_bytes(data)
        return import_file(engine, path, dry_run, max_bytes=max_bytes, source_name=name)
