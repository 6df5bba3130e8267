"""`gradscope tag`, `note`, `rename` and `delete`: what people write on runs, and removing them.

Each needs runs that exist: a database that does not is an error, never a new empty file."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from gradscope.cli.common import DbOption, JsonOption, console, fail, open_engine, print_json
from gradscope.db.errors import StorageError
from gradscope.vocab.text import printable

RunArg = Annotated[str, typer.Argument(help="Run id (or a unique prefix of at least 4 chars).")]


def register(app: typer.Typer) -> None:
    app.command()(tag)
    app.command()(note)
    app.command()(rename)
    app.command()(delete)


def tag(
    run_id: RunArg,
    tags: Annotated[list[str], typer.Argument(help="Tags to add (or, with --remove, remove).")],
    remove: Annotated[bool, typer.Option("--remove", help="Remove these tags instead.")] = False,
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Add tags to a run (or remove them with --remove); prints the run's tags afterwards."""
    from gradscope.db.annotate import set_tags
    from gradscope.db.queries import resolve_run_id

    engine = open_engine(db, create=False)  # a typo in --db creates nothing
    try:
        full = resolve_run_id(engine, run_id)
        now = set_tags(engine, full, remove=tags) if remove else set_tags(engine, full, add=tags)
    except StorageError as exc:
        fail(str(exc))
    if json_out:
        print_json({"id": full, "tags": now})
        return
    console.print(f"{full[:8]} tags: {', '.join(now) or '(none)'}", highlight=False)


def note(
    run_id: RunArg,
    text: Annotated[str, typer.Argument(help='The notes ("" clears them); replaces old notes.')],
    db: DbOption = None,
) -> None:
    """Set a run's free-text notes (replacing any it had)."""
    from gradscope.db.annotate import set_notes
    from gradscope.db.queries import resolve_run_id

    engine = open_engine(db, create=False)  # a typo in --db creates nothing
    try:
        full = resolve_run_id(engine, run_id)
        stored = set_notes(engine, full, text)
    except StorageError as exc:
        fail(str(exc))
    console.print(f"{full[:8]} notes {'saved' if stored else 'cleared'}", highlight=False)


def rename(
    run_id: RunArg,
    name: Annotated[str, typer.Argument(help='The new name ("" removes the name).')],
    db: DbOption = None,
) -> None:
    """Rename a run."""
    from gradscope.db.annotate import rename_run
    from gradscope.db.queries import resolve_run_id

    engine = open_engine(db, create=False)  # a typo in --db creates nothing
    try:
        full = resolve_run_id(engine, run_id)
        stored = rename_run(engine, full, name)
    except StorageError as exc:
        fail(str(exc))
    console.print(Text(f"{full[:8]} is now named: {stored or '(no name)'}"), highlight=False)


def delete(
    run_ids: Annotated[list[str], typer.Argument(help="Run ids (or unique prefixes).")],
    yes: Annotated[
        bool, typer.Option("--yes", help="Really delete (otherwise only list).")
    ] = False,
    db: DbOption = None,
) -> None:
    """Delete runs and everything recorded for them. Without --yes, lists them and stops.

    Running runs are refused: cancel them first (`gradscope cancel`)."""
    from gradscope.db.epoch_writes import EpochWriter
    from gradscope.db.queries import get_run, resolve_run_id

    engine = open_engine(db, create=False)  # a typo in --db creates nothing
    try:
        runs = [get_run(engine, resolve_run_id(engine, r)) for r in dict.fromkeys(run_ids)]
    except StorageError as exc:
        fail(str(exc))
    running = [r for r in runs if r.status == "running"]
    if running:
        fail(
            f"{len(running)} run(s) are running ({', '.join(r.id[:8] for r in running)}); "
            "cancel them first with gradscope cancel"
        )
    for r in runs:
        console.print(
            Text(f"{r.id[:8]}  {printable(r.name or '')}  {r.arch} d{r.depth}  {r.status}"),
            highlight=False,
        )
    if not yes:
        fail(f"would delete the {len(runs)} run(s) above; add --yes to delete them", code=1)
    try:
        deleted = EpochWriter(engine).delete_runs([r.id for r in runs])
    except StorageError as exc:
        fail(str(exc))
    console.print(f"deleted {deleted} run(s)", highlight=False)
