"""What every CLI command shares: consoles, the --db and --json options, readable failures,
opening the database, number formatting and strict JSON. Command modules import this module;
it imports none of them (no circle)."""

from __future__ import annotations

import json
import math
import os
import re
import sys
import typing
from typing import Annotated

import typer
from rich.console import Console
from rich.segment import Segment
from rich.text import Text
from sqlalchemy import Engine

from gradscope.db.engine import make_engine, resolve_db
from gradscope.db.errors import StorageError
from gradscope.vocab.budget import DEFAULT_MAX_PARAMS, MAX_PARAMS_ENV
from gradscope.vocab.csv_files import DEFAULT_MAX_CSV_MB, MAX_CSV_MB_ENV, set_max_csv_mb
from gradscope.vocab.fields import RUN_STATUSES
from gradscope.vocab.text import printable

DB_HELP = "Database: a SQLite file path or a URL (default: $GRADSCOPE_DB, else ./gradscope.db)."


def safe(text: object) -> str:
    """Database (or user) text for the terminal: control characters escaped (`\\x1b`), never
    obeyed. Use it on every value a command prints; the consoles below also apply it."""
    return printable(str(text))


def _safe_lines(text: str) -> str:
    # Newlines separate the lines a command prints (tables, multi-line errors): keep them.
    return "\n".join(printable(part) for part in text.split("\n"))


class SafeConsole(Console):
    """A rich Console that cannot be made to emit a terminal control sequence by data.

    Strings and Text given to print() are escaped before layout (so tables keep their widths);
    as a net for anything else (table cells, panels), every plain segment is escaped again just
    before it is written. Rich's own styles and control segments pass untouched."""

    def print(self, *objects: object, **kwargs: object) -> None:  # type: ignore[override]
        cleaned = [
            _safe_lines(o) if isinstance(o, str) else (_safe_text(o) if isinstance(o, Text) else o)
            for o in objects
        ]
        super().print(*cleaned, **kwargs)  # type: ignore[arg-type]

    def _render_buffer(self, buffer: object) -> str:
        segments = [
            seg if seg.control else Segment(_safe_lines(seg.text), seg.style, seg.control)
            for seg in buffer  # type: ignore[attr-defined]
        ]
        text = super()._render_buffer(segments)
        if any(seg.control for seg in segments):
            return text  # a live display (progress bar) redraws lines: their padding counts
        return _trailing_blanks(text)


# Spaces (and the style codes among them) at the end of a line. Tables and indented blocks pad
# every line to the full width; the padding is invisible but lands in pasted output and diffs.
_TRAILING = re.compile(r"(?:[ \t]|\x1b\[[0-9;]*m)+(?=\n)")


def _trailing_blanks(text: str) -> str:
    """`text` with the spaces at the end of each line dropped (style codes kept)."""
    return _TRAILING.sub(lambda m: re.sub(r"[ \t]", "", m.group()), text)


def _safe_text(text: Text) -> Text:
    cleaned = _safe_lines(text.plain)
    if cleaned == text.plain:
        return text
    # Rare (only text holding controls): its inner styles are dropped with the controls.
    return Text(cleaned, style=text.style, end=text.end)


# markup=False: run names, paths and error texts are shown as typed; "[/x]" in a name must
# neither restyle the output nor crash it. SafeConsole: "\x1b]0;title\x07" in a name must not
# retitle the window or clear the screen (issue 14).
console = SafeConsole(markup=False)
err_console = SafeConsole(stderr=True, markup=False)

DbOption = Annotated[
    str | None, typer.Option("--db", help=DB_HELP, show_default=False, metavar="PATH|URL")
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


# The longest duration any option takes (heartbeats, polls, staleness): one day. Larger values
# overflowed time.sleep/timedelta (inf, 1e308) and killed the heartbeat thread (issue 14).
MAX_DURATION_S = 86_400.0


def _finite_seconds(value: float | None) -> float | None:
    # click's FloatRange lets NaN through (every comparison with NaN is false).
    if value is not None and not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a number of seconds")
    return value


def seconds_option(help: str, minimum: float = 0.0) -> typer.models.OptionInfo:
    """A duration option in seconds: finite, within minimum..MAX_DURATION_S (one day)."""
    return typer.Option(min=minimum, max=MAX_DURATION_S, callback=_finite_seconds, help=help)


MaxCsvOption = Annotated[
    int | None,
    typer.Option(
        "--max-csv-mb",
        min=1,
        max=100_000,
        callback=set_max_csv_mb,
        help=f"Refuse CSV datasets larger than this many MB (default {DEFAULT_MAX_CSV_MB}, "
        f"or ${MAX_CSV_MB_ENV}).",
        show_default=False,
    ),
]


def _set_max_params(value: int | None) -> int | None:
    if value is not None:
        os.environ[MAX_PARAMS_ENV] = str(value)  # the dashboard's server process inherits it
    return value


MaxParamsOption = Annotated[
    int | None,
    typer.Option(
        "--max-params",
        min=1,
        callback=_set_max_params,
        help=f"Refuse queued runs whose model has more parameters than this (default: "
        f"${MAX_PARAMS_ENV} or {DEFAULT_MAX_PARAMS:,}).",
        show_default=False,
    ),
]


def check_statuses(values: list[str] | None) -> list[str] | None:
    """A --status callback: every value must be a run status (a typo would match nothing)."""
    unknown = [v for v in values or [] if v not in RUN_STATUSES]
    if unknown:
        raise typer.BadParameter(
            f"{', '.join(map(repr, unknown))} is not a run status; one of: "
            + ", ".join(RUN_STATUSES)
        )
    return values


def check_archs(values: list[str] | None) -> list[str] | None:
    """An --arch callback: every value must be an architecture runs can have (the built-in
    ones, and "custom" for runs recorded with the API): a typo would match nothing."""
    from gradscope.vocab.config import RunConfig
    from gradscope.vocab.custom import CUSTOM_ARCH

    known = (*typing.get_args(RunConfig.model_fields["arch"].annotation), CUSTOM_ARCH)
    unknown = [v for v in values or [] if v not in known]
    if unknown:
        raise typer.BadParameter(
            f"{', '.join(map(repr, unknown))} is not an architecture; one of: " + ", ".join(known)
        )
    return values


def refuse_value(option: str, message: str) -> None:
    """Refuse an option's value found wrong after the database was read, as click refuses
    one its callback checks (usage line, "Invalid value for ...", exit code 2)."""
    raise typer.BadParameter(message, param_hint=f"'{option}'")


def fail(message: str, code: int = 2) -> None:
    """Print a readable error (never a traceback) and exit non-zero, wrapped at the terminal's
    width (80 columns when it is not a terminal) between words; a word longer than a line (a
    long path) is folded."""
    err_console.print(
        Text("error: ", style="red") + Text(message, overflow="ignore"), highlight=False
    )
    raise typer.Exit(code)


def open_engine(db: str | None, *, create: bool = True, read_only: bool | None = False) -> Engine:
    """The database of `--db`, or a readable failure. Commands that only read pass
    `read_only=True`: a missing database is then an error, never an empty new file, and a
    shared or read-only file is opened without being changed (see
    gradscope.db.engine.make_engine)."""
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
