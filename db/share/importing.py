"""Importing a run database file someone sent into this one.

The file is hostile until checked (`gradscope.db.share.source` opens it, `.validate` checks every
row). Run ids are kept and only runs the target lacks are added; a run already here is compared
by content digest (`.digest`): the same content is "already present" (its names, notes and tags
merge: `.merge`), different content is "conflicting" and this database's version is kept. The
runs are written in short lock-first batches (`.batch_writer`); if writing fails, the runs this
import had written are removed again, so the target ends as before.

Policy for runs that were still queued or running in the file: they are refused (reported with
the reason) and the file's finished runs are imported. Their rows are a snapshot of work in
progress elsewhere; imported as queued/running they would be claimed or reclaimed by this
database's workers, and their content would diverge from the file's.
"""

from __future__ import annotations

import tempfile
from collections.abc import Collection, Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Engine

from gradscope.db.errors import StorageError
from gradscope.db.share.base import ImportRefused, SourceFile, SourceRun, chunks
from gradscope.db.share.batch_writer import BATCH_ROWS, BatchWriter
from gradscope.db.share.digest import existing_ids, read_runs, run_digest
from gradscope.db.share.merge import merge_annotations
from gradscope.db.share.report import ImportedRun, ImportReport
from gradscope.db.share.source import DEFAULT_MAX_IMPORT_BYTES, open_source
from gradscope.db.share.validate import stream_children
from gradscope.db.transactions import transaction
from gradscope.vocab.fields import FINISHED_STATUSES

# (to add, already present, conflicting, refused)
Classified = tuple[list[SourceRun], list[ImportedRun], list[ImportedRun], list[ImportedRun]]
CONFLICTING = (
    "a run with this id is already here with different content; kept this database's version"
)
UNFINISHED = (
    "it was still {status} in the file; import it once it has finished (export it again then)"
)


def _with_children(checked: SourceFile, run_ids: Collection[str]) -> Iterator[SourceRun]:
    """The file's runs `run_ids` with all their rows, one run at a time (for digests); those
    without any rows last."""
    runs = {r.id: r for r in checked.runs}
    current: SourceRun | None = None
    for run_id, table, rows in stream_children(checked.conn, run_ids, BATCH_ROWS):
        if current is None or current.id != run_id:
            if current is not None:
                yield current
            current = SourceRun.bare(runs[run_id].run)
            runs.pop(run_id)
        current.children[table].extend(rows)
    if current is not None:
        yield current
    yield from (SourceRun.bare(runs[run_id].run) for run_id in sorted(run_ids) if run_id in runs)


def _classify(engine: Engine, checked: SourceFile, what: str) -> Classified:
    """(to add, already present, conflicting, refused) against the target's current rows.

    Reads only, without holding the write lock: the writes re-check which runs are present
    (another import may add them meanwhile). Runs present on both sides are compared by
    digest, one run's rows in memory at a time."""
    add: list[SourceRun] = []
    present: list[ImportedRun] = []
    conflicting: list[ImportedRun] = []
    refused: list[ImportedRun] = []
    with transaction(engine, what) as conn:
        existing = existing_ids(conn, [r.id for r in checked.runs])
        same: set[str] = set()
        for run in _with_children(checked, existing):
            target = read_runs(conn, [run.id]).get(run.id)
            if target is not None and run_digest(target) == run_digest(run):
                same.add(run.id)
    for run in checked.runs:
        name, status = run.run["name"], run.run["status"]
        if run.id in same:
            present.append(ImportedRun(run.id, name))
        elif run.id in existing:
            conflicting.append(ImportedRun(run.id, name, CONFLICTING))
        elif status not in FINISHED_STATUSES:
            refused.append(ImportedRun(run.id, name, UNFINISHED.format(status=status)))
        else:
            add.append(run)
    return add, present, conflicting, refused


def _write_runs(writer: BatchWriter, checked: SourceFile, add: list[SourceRun]) -> None:
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
    for chunk in chunks([r.id for r in add if r.id not in queued]):  # runs without any rows
        writer.add("runs", [run_row(by_id[run_id]) for run_id in chunk])
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
        what = f"importing {source} failed, nothing was imported"
        add, present, conflicting, refused = _classify(engine, checked, what)
        writer = BatchWriter(engine, source[:500])
        if add and not dry_run:
            try:
                _write_runs(writer, checked, add)
            except StorageError as exc:
                _undo(writer, source, exc)
        annotated = merge_annotations(engine, checked, present, write=not dry_run)
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


def _undo(writer: BatchWriter, source: str, exc: StorageError) -> None:
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
