"""What every CLI command shares: consoles, the --db and --json options, readable failures,
opening the database, number formatting and strict JSON. Command modules import this module;
it imports none of them (no circle)."""

from __future__ import annotations

import json
import math
import sys
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text
from sqlalchemy import Engine

from db.engine import make_engine, resolve_db
from db.errors import StorageError

DB_HELP = "Database: a SQLite file path or a URL (default: $GRADSCOPE_DB, else ./gradscope.db)."

# markup=False: run names, paths and error texts are shown as typed; "[/x]" in a name must
# neither restyle the output nor crash it.
console = Console(markup=False)
err_console = Console(stderr=True, markup=False)

DbOption = Annotated[
    str | None, typer.Option("--db", help=DB_HELP, show_default=False, metavar="PATH|URL")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def fail(message: str, code: int = 2) -> None:
    """Print a readable error (never a traceback) and exit non-zero."""
    err_console.print(Text("error: ", style="red") + Text(message), highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def open_engine(db: str | None, *, create: bool = True, read_only: bool | None = False) -> Engine:
    """The database of `--db`, or a readable failure. Commands that only read pass
    `read_only=True`: a missing database is then an error, never an empty new file, and a
    shared or read-only file is opened without being changed (see db.engine.make_engine)."""
    try:
        return make_engine(resolve_db(db), create=create, read_only=read_only)
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
