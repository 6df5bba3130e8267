"""Sharing runs between databases: export chosen runs to a standalone SQLite file, import one.

Export writes a file at the current schema (Alembic-stamped, made by `make_engine`) through a
temporary file in the same folder that is renamed into place, so a failure leaves nothing
half-written. Import treats the file as hostile (see `db.share_validate`), keeps run ids, adds
only runs the target lacks, and reads and writes the target in ONE transaction: on any refusal
or error the target is exactly as before. On SQLite that transaction takes the write lock
before its first read (`BEGIN IMMEDIATE`), so what it found is what it writes against, and a
worker committing meanwhile waits for it (busy_timeout) rather than failing it; a lock
conflict that still happens retries the whole transaction (`db.queue.with_retry`).

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
import uuid
from collections.abc import Iterable, Sequence
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
    insert,
    or_,
    select,
    text,
)
from sqlalchemy.exc import SQLAlchemyError

from db.clock import as_utc, now_expr
from db.engine import make_engine
from db.errors import StorageError
from db.models import RunModel
from db.queries import resolve_run_id
from db.queue import with_retry
from db.session import session_scope
from db.share_source import DEFAULT_MAX_IMPORT_BYTES, read_source
from db.share_validate import CHILD_TABLES, TABLE_ORDER, TABLES, ImportRefused, SourceRun
from vocab.fields import FINISHED_STATUSES, RUN_STATUSES

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
    with session_scope(engine) as s:
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
        rows, unfinished = _write_export(engine, ids, tmp)
        _move_into_place(tmp, out, force)
    except SQLAlchemyError as exc:
        raise StorageError(f"export failed: {getattr(exc, 'orig', None) or exc}") from exc
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


def _classify(conn: Connection, runs: list[SourceRun]) -> Classified:
    """(to add, already present, conflicting, refused) against the target's current rows."""
    existing = read_runs(conn, [r.id for r in runs])
    add: list[SourceRun] = []
    present: list[ImportedRun] = []
    conflicting: list[ImportedRun] = []
    refused: list[ImportedRun] = []
    for run in runs:
        entry = ImportedRun(run.id, run.run["name"])
        if run.id in existing:
            if run_digest(existing[run.id]) == run_digest(run):
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


def _insert_runs(conn: Connection, runs: list[SourceRun], source_file: str) -> None:
    now = now_expr(conn.dialect.name)
    # The file's own source_file/imported_at are replaced: this import is where they came from.
    rows = [
        {**{k: v for k, v in r.run.items() if k != "imported_at"}, "source_file": source_file}
        for r in runs
    ]
    for start in range(0, len(rows), CHUNK):
        conn.execute(insert(TABLES["runs"]).values(imported_at=now), rows[start : start + CHUNK])
    for name in CHILD_TABLES:
        batch = [row for r in runs for row in r.children[name]]
        for start in range(0, len(batch), 5_000):
            conn.execute(insert(TABLES[name]), batch[start : start + 5_000])


def _merge_annotations(
    conn: Connection, runs: list[SourceRun], present: list[ImportedRun], *, write: bool
) -> list[ImportedRun]:
    """The conflict rule for runs already here with the same content (README, "Sharing"):
    tags are united; this database's name and notes are kept, the file's fill them only
    where this database has none. Returns the runs that gain something."""
    ids = {p.id for p in present}
    if not ids:
        return []
    from_file = {r.id: r for r in runs if r.id in ids}
    runs_t, tags_t = TABLES["runs"], TABLES["run_tags"]
    here: dict[str, dict[str, Any]] = {}
    here_tags: dict[str, set[str]] = {i: set() for i in ids}
    for chunk in _chunks(sorted(ids)):
        stmt = select(runs_t.c.id, runs_t.c.name, runs_t.c.notes).where(runs_t.c.id.in_(chunk))
        for row in conn.execute(stmt).mappings():
            here[row["id"]] = dict(row)
        for run_id, tag in conn.execute(
            select(tags_t.c.run_id, tags_t.c.tag).where(tags_t.c.run_id.in_(chunk))
        ):
            here_tags[run_id].add(tag)
    gained: list[ImportedRun] = []
    for run_id in sorted(ids):
        source, mine = from_file[run_id], here[run_id]
        fill = {
            k: source.run.get(k) for k in ("name", "notes") if not mine[k] and source.run.get(k)
        }
        new_tags = [
            t["tag"] for t in source.children["run_tags"] if t["tag"] not in here_tags[run_id]
        ]
        if not fill and not new_tags:
            continue
        gained.append(ImportedRun(run_id, mine["name"] or source.run["name"]))
        if write and fill:
            conn.execute(runs_t.update().where(runs_t.c.id == run_id).values(**fill))
        if write and new_tags:
            conn.execute(insert(tags_t), [{"run_id": run_id, "tag": t} for t in new_tags])
    return gained


# An arbitrary constant naming the PostgreSQL advisory lock that serialises imports.
_IMPORT_LOCK_KEY = 0x67736970


def _begin_import(conn: Connection, *, write: bool) -> None:
    """Make the import's reads and writes one serialised unit, before its first read.

    SQLite: open the transaction now (Python's sqlite3 module would open it only at the first
    INSERT, after the reads). For writing, `BEGIN IMMEDIATE` takes the write lock at once,
    waiting for other writers (busy_timeout): no worker or other import can commit between
    what the import read and what it writes. A dry run only reads, in one snapshot.
    PostgreSQL: writers take a transaction-scoped advisory lock, so two imports of one file
    do not both find its runs missing and both insert them; workers never take it.
    """
    if conn.dialect.name == "sqlite":
        if not conn.connection.dbapi_connection.in_transaction:
            conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")
    elif conn.dialect.name == "postgresql" and write:
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _IMPORT_LOCK_KEY})


def import_file(
    engine: Engine,
    path: str | Path,
    dry_run: bool = False,
    *,
    max_bytes: int = DEFAULT_MAX_IMPORT_BYTES,
    source_name: str | None = None,
) -> ImportReport:
    """Merge a run database file into `engine`'s database. See the module docstring.

    Raises ImportRefused (a StorageError) when the file is refused as a whole; StorageError
    when the target fails. Either way the target is unchanged.
    """
    path = Path(path)
    source = source_name or path.name
    checked = read_source(path, source, max_bytes)

    annotated: list[ImportedRun] = []

    def transaction() -> Classified:
        try:
            with engine.begin() as conn:
                _begin_import(conn, write=not dry_run)
                add, present, conflicting, refused = _classify(conn, checked.runs)
                if add and not dry_run:
                    _insert_runs(conn, add, source[:500])
                # Issue 11: names, notes and tags of runs already here merge (see the rule).
                annotated[:] = _merge_annotations(conn, checked.runs, present, write=not dry_run)
        except SQLAlchemyError as exc:
            raise StorageError(
                f"importing {source} failed, nothing was imported: "
                f"{getattr(exc, 'orig', None) or exc}"
            ) from exc
        return add, present, conflicting, refused

    # Each attempt is the whole transaction, rolled back when it fails: a retry classifies
    # the runs again against the target as it is then.
    add, present, conflicting, refused = with_retry(transaction)
    return ImportReport(
        source=source,
        dry_run=dry_run,
        schema=checked.revision,
        upgraded_from=checked.upgraded_from,
        added=tuple(ImportedRun(r.id, r.run["name"]) for r in add),
        already_present=tuple(present),
        conflicting=tuple(conflicting),
        refused=tuple(refused),
        annotated=tuple(annotated),
    )


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
