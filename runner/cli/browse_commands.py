"""`gradscope runs` and `gradscope show`: reading runs in the terminal."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from db.engine import display_url, resolve_db
from db.errors import StorageError
from runner.cli.common import DbOption, JsonOption, console, fail, fmt, open_engine, print_json
from vocab.custom import display_config
from vocab.text import printable


def register(app: typer.Typer) -> None:
    app.command()(runs)
    app.command()(show)


def runs(
    db: DbOption = None,
    json_out: JsonOption = False,
    status: Annotated[
        list[str] | None, typer.Option(help="Only runs with this status (repeatable).")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many runs.")] = None,
) -> None:
    """List runs, newest first: id, name, arch, depth, dataset, status, epochs, test accuracy."""
    from db.queries import list_runs

    try:
        found = list_runs(open_engine(db), status, limit)
    except StorageError as exc:
        fail(str(exc))
    if json_out:
        print_json([r.to_json() for r in found])
        return
    table = Table(title=f"runs in {display_url(resolve_db(db))}", title_justify="left")
    for col in ("id", "name", "arch", "depth", "dataset", "status", "epochs", "test acc"):
        table.add_column(col, overflow="fold")
    for r in found:
        table.add_row(
            r.id[:8],
            r.name or "",
            r.arch,
            str(r.depth),
            r.dataset,
            r.status,
            f"{r.epochs_done}/{r.epochs_total}",
            fmt(r.test_acc),
        )
    console.print(table)
    if not found:
        console.print("No runs yet. Try: gradscope train --arch sigmoid")


def show(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    db: DbOption = None,
    json_out: JsonOption = False,
) -> None:
    """Show one run: its config, status and per-epoch metrics."""
    from db.queries import resolve_run_id, run_document

    engine = open_engine(db)
    try:
        doc = run_document(engine, resolve_run_id(engine, run_id))
    except StorageError as exc:
        fail(str(exc))
    if json_out:
        print_json(doc)
        return
    console.print(
        Text(doc["id"], style="bold") + Text(f" {doc['name'] or ''}  status: {doc['status']}"),
        highlight=False,
    )
    if doc["error"]:
        console.print(f"error: {doc['error']}", highlight=False, markup=False)
    # A custom run's config is the user's dict and a model summary: shown flat, escaped (it is
    # free text from a user's script).
    config = display_config(doc["config"])
    console.print(
        printable(" ".join(f"{k}={v}" for k, v in config.items())), highlight=False, markup=False
    )
    table = Table()
    for col in ("epoch", "train loss", "train acc", "test loss", "test acc", "pred std"):
        table.add_column(col, justify="right")
    for e in doc["epochs"]:
        table.add_row(
            str(e["epoch"]),
            fmt(e["train_loss"], 4),
            fmt(e["train_acc"]),
            fmt(e["test_loss"], 4),
            fmt(e["test_acc"]),
            fmt(e["pred_std"], 4),
        )
    console.print(table)
