"""`gradscope export`, `import` and `export-csv`: share runs as files. Thin: gradscope.db.share
does it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from gradscope.cli.common import DbOption, JsonOption, check_statuses
from gradscope.db.share.source import MAX_IMPORT_MB

RunOption = Annotated[
    list[str] | None,
    typer.Option("--run", help="A run id or unique prefix (repeatable).", show_default=False),
]
SweepOption = Annotated[
    str | None, typer.Option("--sweep", help="Only runs of this sweep (name or id).")
]
StatusOption = Annotated[
    list[str] | None,
    typer.Option(
        "--status",
        help="Only runs with this status (repeatable).",
        show_default=False,
        callback=check_statuses,
    ),
]
ForceOption = Annotated[bool, typer.Option("--force", help="Replace existing output.")]


def _chosen(db: str | None, run: list[str] | None, sweep: str | None, status: list[str] | None):  # noqa: ANN202
    """(engine, run ids) for the filters; fails readably."""
    from gradscope.cli.common import fail, open_engine
    from gradscope.db.errors import StorageError
    from gradscope.db.share.export import select_run_ids

    engine = open_engine(db, read_only=True)
    try:
        ids = select_run_ids(engine, run or (), sweep, status or ())
    except StorageError as exc:
        fail(str(exc))
    if not ids:
        fail("no runs match; nothing to export")
    return engine, ids


def export_cmd(
    out: Annotated[Path, typer.Argument(help="The .db file to write.", show_default=False)],
    run: RunOption = None,
    sweep: SweepOption = None,
    status: StatusOption = None,
    force: ForceOption = False,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Write runs (all, or those chosen) with everything recorded to a standalone .db file."""
    from gradscope.cli.common import console, fail, print_json
    from gradscope.db.errors import StorageError
    from gradscope.db.share.export import export_runs

    engine, ids = _chosen(db, run, sweep, status)
    try:
        # The export says which runs it wrote unfinished: no query per run afterwards.
        result = export_runs(engine, ids, out, force=force)
    except StorageError as exc:
        fail(str(exc))
    if json_out:
        print_json(
            {
                "path": str(result.path),
                "runs": list(result.run_ids),
                "rows": result.rows,
                "bytes": result.bytes,
                "unfinished": list(result.unfinished),
            }
        )
        return
    console.print(
        f"exported {len(result.run_ids)} run(s), {result.rows:,} rows, {result.bytes:,} bytes "
        f"to {result.path}\nopen it with: gradscope runs --db {result.path}",
        highlight=False,
        markup=False,
        soft_wrap=True,
    )
    if result.unfinished:
        console.print(
            f"note: {len(result.unfinished)} run(s) were still queued or running; importing "
            "the file will refuse them (export again once they finish).",
            highlight=False,
            markup=False,
        )


def import_cmd(
    file: Annotated[Path, typer.Argument(help="A .db file exported by gradscope.")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check and report; write nothing.")
    ] = False,
    max_size_mb: Annotated[
        int, typer.Option("--max-size-mb", help="Refuse files larger than this.", min=1)
    ] = MAX_IMPORT_MB,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Merge a run database file into this database. Run ids are kept: runs already here are
    skipped, runs here with different content are reported and never overwritten."""
    from gradscope.cli.common import console, fail, open_engine, print_json
    from gradscope.db.errors import StorageError
    from gradscope.db.share.importing import import_file

    engine = open_engine(db, read_only=dry_run)  # a dry run creates and changes nothing
    try:
        report = import_file(engine, file, dry_run, max_bytes=max_size_mb * 2**20)
    except StorageError as exc:
        fail(str(exc))
    if json_out:
        print_json(report.to_json())
    else:
        console.print(report.summary, highlight=False, markup=False, soft_wrap=True)


def export_csv_cmd(
    out_dir: Annotated[Path, typer.Argument(help="Folder for runs/epochs/layers/metrics files.")],
    run: RunOption = None,
    sweep: SweepOption = None,
    status: StatusOption = None,
    fmt: Annotated[
        str, typer.Option("--format", help="csv or parquet.", case_sensitive=False)
    ] = "csv",
    force: ForceOption = False,
    db: DbOption = None,
) -> None:
    """Write the runs, per-epoch and per-layer tables as CSV or Parquet files for pandas."""
    from gradscope.cli.common import console, fail
    from gradscope.db.errors import StorageError
    from gradscope.db.share.table_files import export_tables

    engine, ids = _chosen(db, run, sweep, status)
    try:
        paths = export_tables(engine, ids, out_dir, fmt.lower(), force=force)  # type: ignore[arg-type]
    except StorageError as exc:
        fail(str(exc))
    console.print(
        f"wrote {len(ids)} run(s): " + ", ".join(str(p) for p in paths),
        highlight=False,
        markup=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.command("export")(export_cmd)
    app.command("import")(import_cmd)
    app.command("export-csv")(export_csv_cmd)
