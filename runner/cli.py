"""The `gradscope` command. Thin: parses options, calls library functions, prints results."""

from __future__ import annotations

import json
import math
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from db.engine import display_url, make_engine, resolve_db
from db.errors import StorageError
from runner import cli_dashboard, cli_queue, cli_share
from runner.cli_options import DB_HELP, with_config_options
from runner.config import ConfigError

app = typer.Typer(
    help="gradscope: see vanishing gradients happen, measure them, compare the cures.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema commands.", no_args_is_help=True)
app.add_typer(db_app, name="db")

# markup=False: run names, paths and error texts are shown as typed; "[/x]" in a name must
# neither restyle the output nor crash it.
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)

DbOption = Annotated[str | None, typer.Option("--db", help=DB_HELP, show_default=False)]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def fail(message: str, code: int = 2) -> None:
    """Print a readable error (never a traceback) and exit non-zero."""
    err_console.print(Text("error: ", style="red") + Text(message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def open_engine(db: str | None, *, create: bool = True):  # noqa: ANN201
    try:
        return make_engine(resolve_db(db), create=create)
    except StorageError as exc:
        fail(str(exc))


def fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def _strict_json(value: object) -> object:
    """JSON has no NaN or infinity: NaN is null (as stored), infinities the strings "inf" and
    "-inf", so the output parses everywhere (jq, JSON.parse), not only in Python."""
    if isinstance(value, float) and not math.isfinite(value):
        return None if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {k: _strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_strict_json(v) for v in value]
    return value


def print_json(data: object) -> None:
    text = json.dumps(_strict_json(data), indent=2, default=str, allow_nan=False)
    sys.stdout.write(text + "\n")


@app.command()
@with_config_options()
def train(
    config_values: dict[str, str],
    db: DbOption = None,
    json_out: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
) -> None:
    """Train one run in the foreground, recording every epoch, and print its id."""
    from runner.foreground import train_foreground

    try:
        run_id, status = train_foreground(
            open_engine(db), config_values, progress=not (quiet or json_out)
        )
    except (ConfigError, StorageError) as exc:
        fail(str(exc))
    if json_out:
        from db.queries import run_document

        print_json(run_document(open_engine(db), run_id))
    else:
        console.print(f"{run_id}  {status}", highlight=False)
    if status == "failed":
        raise typer.Exit(1)


@app.command()
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


@app.command()
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
    console.print(
        " ".join(f"{k}={v}" for k, v in doc["config"].items()), highlight=False, markup=False
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


@db_app.command("upgrade")
def db_upgrade(db: DbOption = None) -> None:
    """Upgrade a database's schema to this gradscope's version (creates it if missing)."""
    from db.migrate import upgrade

    target = resolve_db(db)
    try:
        before, after = upgrade(make_engine(target, check_schema=False))
    except StorageError as exc:
        fail(str(exc))
    console.print(f"{display_url(target)}: schema {before or 'none'} -> {after}", highlight=False)


@db_app.command("current")
def db_current(db: DbOption = None) -> None:
    """Print the database's schema version and the one this gradscope writes."""
    from db.engine import SCHEMA_REVISION, current_revision

    try:
        revision = current_revision(make_engine(resolve_db(db), check_schema=False, create=False))
    except StorageError as exc:
        fail(str(exc))
    console.print(
        f"database: {revision or 'none'}; this gradscope: {SCHEMA_REVISION}", highlight=False
    )


# Feature commands live in their own modules, each registering itself here.
for _module in (cli_queue, cli_share, cli_dashboard):
    _module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
