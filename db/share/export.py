"""Exporting chosen runs to a standalone SQLite file that anyone can open or import.

The file is written at the current schema (Alembic-stamped, made by `make_engine`) through a
temporary file in the same folder that is renamed into place, so a failure leaves nothing
half-written. The runs are read in one transaction: what the file holds is one moment's state.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, insert, or_, select

from gradscope.db.engine import make_engine
from gradscope.db.models import RunModel
from gradscope.db.queries import resolve_run_id
from gradscope.db.share.base import (
    TABLE_ORDER,
    TABLES,
    ShareError,
    chunks,
    rollback_journal,
    sidecars,
)
from gradscope.db.share.digest import read_runs
from gradscope.db.transactions import orm, transaction
from gradscope.vocab.fields import FINISHED_STATUSES, RUN_STATUSES


@dataclass(frozen=True)
class ExportResult:
    path: Path
    run_ids: tuple[str, ...]
    rows: int  # rows written, all tables together
    bytes: int
    # Runs written while still queued or running: an import refuses them.
    unfinished: tuple[str, ...] = ()


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


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and a.samefile(b)
    except OSError:
        return False


def _write_export(engine: Engine, run_ids: Sequence[str], path: Path) -> tuple[int, list[str]]:
    """Copy the runs into a new database at `path`; returns the number of rows written and
    the ids of runs written while still queued or running."""
    out = make_engine(str(path))  # creates the current schema, stamped with its revision
    rows = 0
    unfinished: list[str] = []
    try:
        with transaction(engine, "export failed") as src, transaction(out, "export failed") as dst:
            for chunk in chunks(run_ids):
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
    rollback_journal(path)
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
    if engine.dialect.name == "sqlite" and engine.url.database:
        source = Path(engine.url.database)
        if out == source.absolute() or _same_file(out, source):
            raise ShareError(f"{out} is the database being exported; choose another file")
    if not out.parent.is_dir():
        raise ShareError(f"folder {out.parent} does not exist")
    # A fresh name (not mkstemp's pre-made 0600 file): SQLite creates it with the usual mode.
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        rows, unfinished = _write_export(engine, ids, tmp)
        _move_into_place(tmp, out, force)
    finally:
        for leftover in (tmp, *sidecars(tmp)):
            leftover.unlink(missing_ok=True)
    return ExportResult(out, tuple(ids), rows, out.stat().st_size, tuple(unfinished))


def _move_into_place(tmp: Path, out: Path, force: bool) -> None:
    if force:
        # A stale -wal of the replaced file would be replayed into the new one: remove it.
        for stale in sidecars(out):
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
