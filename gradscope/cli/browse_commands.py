"""`gradscope runs` and `gradscope show`: reading runs in the terminal."""

from __future__ import annotations

from typing import Annotated

import typer
from rich import box
from rich.table import Table
from rich.text import Text
from sqlalchemy import Engine

from gradscope.cli.common import (
    DbOption,
    JsonOption,
    check_statuses,
    console,
    err_console,
    fail,
    fmt,
    open_engine,
    print_json,
)
from gradscope.cli.options import config_metavar
from gradscope.db.engine import display_url, resolve_db
from gradscope.db.errors import StorageError
from gradscope.db.queries import RunSummary
from gradscope.vocab.custom import display_config
from gradscope.vocab.text import printable


def register(app: typer.Typer) -> None:
    app.command()(runs)
    app.command()(show)


def runs(
    db: DbOption = None,
    json_out: JsonOption = False,
    status: Annotated[
        list[str] | None,
        typer.Option(
            help="Only runs with this status (repeatable).",
            metavar="STATUS",
            callback=check_statuses,
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            min=1, help="At most this many runs (1 or more; default all).", metavar="INTEGER"
        ),
    ] = None,
    sweep: Annotated[
        str | None, typer.Option(help="Only runs of this sweep (its name or id).", metavar="SWEEP")
    ] = None,
    arch: Annotated[
        list[str] | None,
        typer.Option(help="Only runs of this arch (repeatable).", metavar=config_metavar("arch")),
    ] = None,
    name: Annotated[
        str | None, typer.Option(help="Only runs whose name contains this text.", metavar="TEXT")
    ] = None,
    tag: Annotated[
        list[str] | None,
        typer.Option("--tag", help="Only runs carrying this tag (repeatable).", metavar="TAG"),
    ] = None,
) -> None:
    """List runs, newest first: id, name, model, dataset, status, epochs, test accuracy and
    the diagnosis (the most serious finding; `gradscope show ID` explains it)."""
    from gradscope.db.queries import list_runs

    engine = open_engine(db, read_only=True)
    try:
        found = list_runs(engine, status, limit, sweep=sweep, archs=arch, name=name, tags=tag)
        labels = _badges(engine, found)
    except StorageError as exc:
        fail(str(exc))
    if json_out:
        print_json([{**r.to_json(), "diagnosis": labels.get(r.id) or None} for r in found])
        return
    table = Table(
        title=printable(f"runs in {display_url(resolve_db(db))}"),
        title_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        padding=(0, 1, 0, 0),
    )
    rows = [
        (
            r.id[:8],
            printable(r.name or ""),
            printable(f"{r.arch} d{r.depth}"),
            printable(r.dataset),
            printable(r.status),
            f"{r.epochs_done}/{r.epochs_total}",
            fmt(r.test_acc),
            labels.get(r.id, ""),
        )
        for r in found
    ]
    # Short columns keep their full width and never wrap; the name and dataset share what is
    # left and are cut with an ellipsis, never broken mid-word, so the table reads at 80
    # columns.
    heads = ("id", "name", "model", "dataset", "status", "epochs", "acc", "diagnosis")
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(heads)]
    fixed = sum(w for h, w in zip(heads, widths, strict=True) if h not in ("name", "dataset"))
    spare = max(8, console.width - fixed - 2 * len(heads))  # the box and padding: 2 a column
    # The name gets up to two thirds of what is left, the dataset the rest.
    name_w = min(widths[1], max(4, spare * 2 // 3))
    caps = {"name": name_w, "dataset": max(5, min(widths[3], spare - name_w))}
    for head, width in zip(heads, widths, strict=True):
        cap = caps.get(head, width)
        justify = "right" if head in ("epochs", "acc") else "left"
        table.add_column(
            head,
            no_wrap=True,
            overflow="ellipsis",
            min_width=min(cap, width),
            max_width=cap,
            justify=justify,
        )
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if not found and (status or sweep or arch or name or tag):
        err_console.print("No runs match these filters.")
    elif not found:
        err_console.print("No runs yet. Try: gradscope train --arch sigmoid")


def _badges(engine: Engine, found: list[RunSummary]) -> dict[str, str]:
    """The runs table's diagnosis label of each listed run ("" for runs with no data yet)."""
    import pandas as pd

    from gradscope.analysis.badges import badges
    from gradscope.db.frames import run_ends

    if not found:
        return {}
    runs = pd.DataFrame(
        {
            "id": [r.id for r in found],
            "status": [r.status for r in found],
            "arch": [r.arch for r in found],
        }
    )
    ends = run_ends(engine)
    labels = badges(runs, ends.layers, ends.epochs)
    return {run_id: ("" if b == "empty" else b) for run_id, b in labels.items()}


def show(
    run_id: Annotated[str, typer.Argument(help="Run id (or a unique prefix).")],
    db: DbOption = None,
    json_out: JsonOption = False,
    epoch: Annotated[
        int | None,
        typer.Option(
            help="Show the layers at this epoch (default: the last recorded one).",
            metavar="INTEGER",
        ),
    ] = None,
) -> None:
    """Show one run: config, status, diagnosis, per-epoch metrics and per-layer gradients."""
    from gradscope.cli.run_view import diagnosis_view, epochs_view, layers_view, run_diagnosis
    from gradscope.db.queries import resolve_run_id, run_document

    engine = open_engine(db, read_only=True)
    try:
        doc = run_document(engine, resolve_run_id(engine, run_id))
    except StorageError as exc:
        fail(str(exc))
    recorded = sorted({s["epoch"] for s in doc["layer_stats"]})
    if epoch is not None and epoch not in recorded:
        span = f"1..{recorded[-1]}" if recorded else "none yet"
        fail(f"--epoch {epoch}: this run has no layer statistics for it (recorded: {span})")
    findings = run_diagnosis(doc)
    if json_out:
        print_json({**doc, "diagnosis": [f.to_json() for f in findings]})
        return
    header = Text(doc["id"], style="bold")
    header.append(printable(f" {doc['name'] or ''}  status: {doc['status']}"))
    console.print(header, highlight=False)
    if doc["tags"]:
        console.print("tags: " + printable(", ".join(doc["tags"])), highlight=False)
    if doc["notes"]:
        # An imported file's notes may hold escapes: shown, never obeyed (newlines kept).
        shown = "\n".join(printable(line) for line in doc["notes"].splitlines())
        console.print(f"notes: {shown}", highlight=False)
    if doc["error"]:
        console.print(Text("error: " + printable(doc["error"]), style="red"), highlight=False)
    console.print(
        printable(f"attempts: {doc['attempts']}  host: {doc['hostname'] or '-'}"), highlight=False
    )
    # A custom run's config is the user's dict and a model summary: shown flat, escaped (it is
    # free text from a user's script).
    config = " ".join(f"{k}={v}" for k, v in display_config(doc["config"]).items())
    console.print(printable(config), highlight=False)
    console.print()
    console.print(diagnosis_view(findings), highlight=False)
    console.print()
    console.print(epochs_view(doc), highlight=False)
    if recorded:
        console.print(layers_view(doc, epoch if epoch is not None else recorded[-1]))
