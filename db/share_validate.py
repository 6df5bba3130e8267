"""Checking every row and value of a run database someone else sent, before any is trusted.

Types come from the models' column types (an integer column holds integers, a float column
numbers, text columns text of at most their length, valid UTF-8 without NUL); meaning comes
from gradscope's rules (run ids are UUIDs, statuses known, configs valid RunConfigs agreeing
with the run's columns, epochs within 1..epochs, layers within 0..depth, blobs exactly as long
as their shape says, no duplicate keys, no rows without their run). Any problem refuses the
whole file with `ImportRefused`, whose message names the table, the run or row, the column and
why. `gradscope.db.share_source` opens the file and checks its structure first.
"""

from __future__ import annotations

import json
import math
import sqlite3
import struct
import uuid
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Boolean, Column, DateTime, Float, Integer, LargeBinary, String, Table

from gradscope.db.clock import as_utc
from gradscope.db.errors import StorageError
from gradscope.db.models import Base
from gradscope.vocab.config import ConfigError, make_config
from gradscope.vocab.custom import CUSTOM_ACTIVATIONS, CUSTOM_ARCH, custom_config_problem
from gradscope.vocab.fields import HIST_SLOTS, RUN_STATUSES
from gradscope.vocab.text import has_unsafe_chars

MAX_TEXT_CHARS = 10_000  # unbounded Text columns (a run's error); finish_run keeps 10,000
MAX_CONFIG_CHARS = 20_000
MAX_GRID_SIZE = 512
MAX_POINTS = 1_000_000
MAX_PROBLEMS = 20
GRAD_HIST_BYTES = HIST_SLOTS * 4
LAYER_KINDS = ("input", "hidden", "block", "output")
LAYER_ACTIVATIONS = ("sigmoid", "relu")
INT32_MAX = 2**31 - 1
# Text columns whose values may span lines (newline and tab allowed; other controls are not).
MULTILINE = ("error", "notes")

# Parents first: the order rows are inserted in.
TABLE_ORDER = (
    "runs",
    "run_layers",
    "epoch_metrics",
    "layer_stats",
    "decision_grids",
    "run_points",
    "run_tags",
)
CHILD_TABLES = TABLE_ORDER[1:]
TABLES: dict[str, Table] = {name: Base.metadata.tables[name] for name in TABLE_ORDER}
# Denormalised run columns that must agree with the run's config.
CONFIG_COLUMNS = {
    "arch": "arch",
    "dataset": "dataset",
    "depth": "depth",
    "width": "width",
    "seed": "seed",
    "epochs_total": "epochs",
}


# sqlite3 decodes SQLite's own error messages strictly: one quoting a damaged schema's bytes
# raises UnicodeDecodeError instead of sqlite3.Error.
SQLITE_ERRORS = (sqlite3.Error, UnicodeDecodeError)


class ImportRefused(StorageError):
    """The whole file was refused; nothing was written. `problems` lists each reason."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = tuple(problems)
        shown = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source} was refused, nothing was imported:\n{shown}")


@dataclass(frozen=True)
class SourceRun:
    """One run of the file with its rows, every value checked and converted to Python types."""

    run: dict[str, Any]
    children: dict[str, list[dict[str, Any]]]

    @property
    def id(self) -> str:
        return self.run["id"]


@dataclass(frozen=True)
class SourceFile:
    """What a checked file holds: its runs in file order, and its schema revision."""

    revision: str
    upgraded_from: str | None
    runs: list[SourceRun]  # run rows only: their children are streamed (`stream_children`)
    rows: dict[str, int]  # child rows per run id
    conn: sqlite3.Connection  # the checked private copy, open while the import copies it


class Problems:
    """Collects reasons for refusal; gives up early once there are enough to act on."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)
        if len(self.items) >= MAX_PROBLEMS:
            self.items.append(f"(stopped checking after {MAX_PROBLEMS} problems)")
            raise ImportRefused(self.source, self.items)

    def refuse(self, message: str) -> None:
        self.items.append(message)
        raise ImportRefused(self.source, self.items)

    def raise_any(self) -> None:
        if self.items:
            raise ImportRefused(self.source, self.items)


def printable(text: str) -> str:
    """Text from the file, safe to show: invalid UTF-8 and control characters escaped."""
    escaped = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in escaped)


def quote(identifier: str) -> str:
    """Quote one of gradscope's own (trusted) identifiers."""
    return '"' + identifier.replace('"', '""') + '"'


# ---------------------------------------------------------------------------------------------
# Values: types first (driven by the models' column types), then meaning
# ---------------------------------------------------------------------------------------------


class _Bad(ValueError):
    pass


def _kind(value: object) -> str:
    return {int: "an integer", float: "a real number", str: "text", bytes: "a blob"}.get(
        type(value), type(value).__name__
    )


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown(value: object) -> str:
    return _cut(repr(value), 40)


def _no_nan(constant: str) -> None:
    raise _Bad(f"config holds {constant}, which is not a valid number")


def convert(column: Column, value: object) -> Any:
    """Check one stored value against its column's type; returns it as a Python value."""
    kind = column.type
    if value is None:
        if not column.nullable:
            raise _Bad(f"{column.name} must have a value (it is NULL)")
        return None
    if isinstance(kind, Boolean):
        if type(value) is not int or value not in (0, 1):
            raise _Bad(f"{column.name} must be 0 or 1, got {_kind(value)} {_shown(value)}")
        return bool(value)
    if isinstance(kind, Integer):
        if type(value) is not int:
            raise _Bad(f"{column.name} must be an integer, got {_kind(value)} {_shown(value)}")
        if not -INT32_MAX <= value <= INT32_MAX:
            raise _Bad(f"{column.name} is out of range: {value}")
        return value
    if isinstance(kind, Float):
        if type(value) not in (int, float):
            raise _Bad(f"{column.name} must be a number, got {_kind(value)} {_shown(value)}")
        return float(value)
    if isinstance(kind, LargeBinary):
        if type(value) is not bytes:
            raise _Bad(f"{column.name} must be a blob, got {_kind(value)} {_shown(value)}")
        return value
    if type(value) is not str:
        raise _Bad(f"{column.name} must be text, got {_kind(value)} {_shown(value)}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise _Bad(f"{column.name} is not valid UTF-8 text: {_shown(value)}") from None
    if isinstance(kind, DateTime):
        try:
            if len(value) > 40:
                raise ValueError
            return as_utc(datetime.fromisoformat(value))
        except (ValueError, OverflowError):
            raise _Bad(f"{column.name} is not a date and time: {_shown(value)}") from None
    if isinstance(kind, JSON):
        if len(value) > MAX_CONFIG_CHARS:
            raise _Bad(
                f"{column.name} is {len(value):,} characters long; at most {MAX_CONFIG_CHARS:,}"
            )
        try:
            parsed = json.loads(value, parse_constant=_no_nan)
        except (ValueError, RecursionError):
            raise _Bad(f"{column.name} is not valid JSON: {_shown(value)}") from None
        if not isinstance(parsed, dict):
            raise _Bad(f"{column.name} must be a JSON object, got {_shown(parsed)}")
        return parsed
    assert isinstance(kind, String)
    limit = kind.length or MAX_TEXT_CHARS
    if len(value) > limit:
        raise _Bad(f"{column.name} is {len(value):,} characters long; at most {limit:,} allowed")
    if "\x00" in value:
        raise _Bad(f"{column.name} contains a NUL character")
    # Terminal controls (ESC, DEL, C1, bidi) would be obeyed when the text is printed; only the
    # multi-line texts (an error's traceback, notes) may hold newlines and tabs.
    checked = value.replace("\n", "").replace("\t", "") if column.name in MULTILINE else value
    if has_unsafe_chars(checked):
        bad = next(c for c in checked if has_unsafe_chars(c))
        raise _Bad(f"{column.name} contains control characters ({printable(bad)})")
    return value


def _is_uuid(value: object) -> bool:
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value
    except ValueError:
        return False


# Values with a fixed range (issue 14): an accuracy of 7.5 or a fraction of -7 is a forgery, not
# a measurement. NaN/NULL stay allowed (a diverged run's unknowns are stored that way).
UNIT_INTERVAL = (
    "train_acc",
    "test_acc",
    "final_train_acc",
    "final_test_acc",
    "saturated_frac",
    "dead_frac",
)
NON_NEGATIVE_FINITE = ("seconds",)


def _check_ranges(row: dict[str, Any]) -> None:
    for column in UNIT_INTERVAL:
        value = row.get(column)
        if value is not None and not math.isnan(value) and not 0.0 <= value <= 1.0:
            raise _Bad(f"{column} is {value!r}; it must lie in [0, 1]")
    for column in NON_NEGATIVE_FINITE:
        value = row.get(column)
        if value is not None and not (math.isfinite(value) and value >= 0.0):
            raise _Bad(f"{column} is {value!r}; it must be a finite number >= 0")


def _check_run(row: dict[str, Any]) -> None:
    """A run's meaning: a UUID id, a known status, a valid config agreeing with its columns."""
    if not _is_uuid(row["id"]):
        raise _Bad(f"id must be a UUID, got {_shown(row['id'])}")
    if row["status"] not in RUN_STATUSES:
        raise _Bad(f"status {_shown(row['status'])} is not one of {', '.join(RUN_STATUSES)}")
    if row["arch"] == CUSTOM_ARCH:
        _check_custom_run(row)
        _check_ranges(row)
        return
    try:
        cfg = make_config(row["config"])
    except ConfigError as exc:
        detail = str(exc).replace("\n", "; ")
        raise _Bad(f"config is not a valid run configuration: {_cut(detail, 300)}") from None
    for column, field in CONFIG_COLUMNS.items():
        if row[column] != getattr(cfg, field):
            raise _Bad(
                f"{column} is {_shown(row[column])} but its config says {getattr(cfg, field)!r}"
            )
    if not 0 <= row["epochs_done"] <= row["epochs_total"]:
        raise _Bad(f"epochs_done {row['epochs_done']} is outside 0..{row['epochs_total']}")
    if row["group_index"] is not None and row["group_index"] < 0:
        raise _Bad(f"group_index {row['group_index']} is negative")
    _check_ranges(row)


def _check_custom_run(row: dict[str, Any]) -> None:
    """A run recorded with the gradscope API: its config is the user's dict and a model
    summary (gradscope.vocab.custom), not a RunConfig; its length is the epochs it logged."""
    problem = custom_config_problem(row["config"])
    if problem:
        raise _Bad(f"config is not a valid custom run's configuration: {_cut(problem, 300)}")
    for column in ("depth", "width", "seed"):
        if row[column] < 0:
            raise _Bad(f"{column} {row[column]} is negative")
    if not 0 <= row["epochs_done"] <= row["epochs_total"]:
        raise _Bad(f"epochs_done {row['epochs_done']} is outside 0..{row['epochs_total']}")


def _check_custom_layer(row: dict[str, Any]) -> None:
    """A custom run's layer: any module type as its kind, an activation when one was seen,
    the weight's shape as a JSON list of sizes."""
    if has_unsafe_chars(row["kind"]) or has_unsafe_chars(row["name"]):
        raise _Bad("name or kind contains control characters")
    if row["activation"] not in CUSTOM_ACTIVATIONS:
        raise _Bad(
            f"activation {_shown(row['activation'])} is not one of {', '.join(CUSTOM_ACTIVATIONS)}"
        )
    if row["shape"] is not None:
        try:
            shape = json.loads(row["shape"], parse_constant=_no_nan)
        except (ValueError, RecursionError):
            raise _Bad(f"shape is not valid JSON: {_shown(row['shape'])}") from None
        if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
            raise _Bad(f"shape must be a list of sizes, got {_shown(shape)}")
    for key in ("fan_in", "fan_out", "n_params"):
        if row[key] < 0:
            raise _Bad(f"{key} {row[key]} is out of range")


def _check_child(table: str, row: dict[str, Any], run: dict[str, Any]) -> None:
    """A child row's meaning, against its run: epochs, layers, blob lengths."""
    epochs, depth = run["epochs_total"], run["depth"]
    if "epoch" in row and not 1 <= row["epoch"] <= epochs:
        raise _Bad(f"epoch {row['epoch']} is outside the run's 1..{epochs}")
    if "layer" in row and not 0 <= row["layer"] <= depth:
        raise _Bad(f"layer {row['layer']} is outside the run's 0..{depth} (depth {depth})")
    _check_ranges(row)
    if table == "run_layers" and run["arch"] == CUSTOM_ARCH:
        _check_custom_layer(row)
    elif table == "run_layers":
        if row["kind"] not in LAYER_KINDS:
            raise _Bad(f"kind {_shown(row['kind'])} is not one of {', '.join(LAYER_KINDS)}")
        if row["activation"] not in LAYER_ACTIVATIONS:
            raise _Bad(f"activation {_shown(row['activation'])} is not sigmoid or relu")
        for key in ("fan_in", "fan_out", "n_params"):
            if row[key] < (0 if key == "n_params" else 1):
                raise _Bad(f"{key} {row[key]} is out of range")
    elif table == "run_tags":
        if not row["tag"].strip() or has_unsafe_chars(row["tag"]):
            raise _Bad("tag is empty or contains control characters")
    elif table == "layer_stats":
        hist = row["grad_hist"]
        if hist is not None:
            if len(hist) != GRAD_HIST_BYTES:
                raise _Bad(f"grad_hist is {len(hist)} bytes; it must be {GRAD_HIST_BYTES}")
            if min(struct.unpack(f"<{HIST_SLOTS}i", hist)) < 0:
                raise _Bad("grad_hist holds a negative count")
    elif table == "decision_grids":
        for low, high in (("x_min", "x_max"), ("y_min", "y_max")):
            if not row[low] < row[high]:  # NaN fails too
                raise _Bad(f"{low} {row[low]!r} is not below {high} {row[high]!r}")
        size = row["size"]
        if not 1 <= size <= MAX_GRID_SIZE:
            raise _Bad(f"size {size} is outside 1..{MAX_GRID_SIZE}")
        if len(row["probs"]) != size * size * 2:
            raise _Bad(
                f"probs is {len(row['probs'])} bytes; a {size}x{size} grid has {size * size * 2}"
            )
    elif table == "run_points":
        n = row["n"]
        if not 0 <= n <= MAX_POINTS:
            raise _Bad(f"n {n} is outside 0..{MAX_POINTS:,}")
        if len(row["points"]) != n * 12:
            raise _Bad(f"points is {len(row['points'])} bytes; {n} points take {n * 12}")


def _key_columns(table: Table) -> list[str]:
    return [c.name for c in table.primary_key.columns]


def _label(table: str, row: dict[str, Any], index: int) -> str:
    """Where a bad value is, for people: the run (short id) and the row's key."""
    run_id = row.get("id" if table == "runs" else "run_id")
    where = f"run {run_id[:8]}" if _is_uuid(run_id) else f"row {index + 1}"
    keys = [f"{k} {row[k]}" for k in ("epoch", "layer") if type(row.get(k)) is int]
    return f"{table} ({', '.join([where, *keys])})"


def _select(name: str, order: bool) -> str:
    columns = ", ".join(quote(c.name) for c in TABLES[name].columns)
    # Ordered by key, duplicates are neighbours: found with one previous key, not a set of
    # millions (SQLite sorts on disk when the file has no index: memory stays bounded).
    by = f" ORDER BY {', '.join(quote(k) for k in _key_columns(TABLES[name]))}" if order else ""
    return f"SELECT {columns} FROM {quote(name)}{by}"


def read_rows(conn: sqlite3.Connection, source: str) -> tuple[list[SourceRun], dict[str, int]]:
    """Every row of every table, checked, in one streaming pass: only the run rows are kept
    (children are read again, run by run, when copied: `stream_children`). Child rows must
    belong to a run of the file. Returns the runs (file order) and each run's child rows."""
    problems = Problems(source)
    runs: dict[str, SourceRun] = {}
    counts: dict[str, int] = {}
    bad_runs: set[object] = set()  # their rows are not checked again: one message per run
    try:
        for name in TABLE_ORDER:
            table = TABLES[name]
            columns = list(table.columns)
            keys = _key_columns(table)
            seen: set[tuple] = set()  # runs only (at most MAX_RUNS keys)
            previous: tuple | None = None
            for index, raw in enumerate(conn.execute(_select(name, order=name != "runs"))):
                raw_row = dict(zip((c.name for c in columns), raw, strict=True))
                if name != "runs" and raw_row["run_id"] in bad_runs:
                    continue
                label = _label(name, raw_row, index)
                try:
                    if name == "runs":
                        bad_runs.add(raw_row["id"])  # until its row passes every check
                    row = {c.name: convert(c, v) for c, v in zip(columns, raw, strict=True)}
                    key = tuple(row[k] for k in keys)
                    if key in seen or key == previous:
                        raise _Bad("appears twice (duplicate key)")
                    if name == "runs":
                        seen.add(key)
                        _check_run(row)
                        bad_runs.discard(raw_row["id"])
                        runs[row["id"]] = SourceRun(row, {t: [] for t in CHILD_TABLES})
                        counts[row["id"]] = 0
                        continue
                    previous = key
                    parent = runs.get(row["run_id"])
                    if parent is None:
                        raise _Bad(f"belongs to no run of the file ({_shown(row['run_id'])})")
                    _check_child(name, row, parent.run)
                    counts[row["run_id"]] += 1
                except _Bad as exc:
                    problems.add(f"{label}: {exc}")
    except SQLITE_ERRORS as exc:
        problems.refuse(f"SQLite failed while reading rows: {printable(str(exc))}")
    problems.raise_any()
    return list(runs.values()), counts


def stream_children(
    conn: sqlite3.Connection, run_ids: Collection[str], chunk: int
) -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    """(run id, table, rows) for the runs `run_ids` of a file `read_rows` has accepted: runs
    in id order, each run's tables parents first, at most `chunk` rows at a time. One sorted
    cursor per table walks the file once; memory holds one chunk."""
    cursors = {}
    for name in CHILD_TABLES:
        cursor = conn.execute(_select(name, order=True))
        cursors[name] = (cursor, cursor.fetchone())
    for run_id in sorted(run_ids):
        for name in CHILD_TABLES:
            columns = list(TABLES[name].columns)
            cursor, raw = cursors[name]
            rows: list[dict[str, Any]] = []
            # Run ids are checked UUIDs (lowercase ASCII): SQLite's order is Python's.
            while raw is not None and raw[0] <= run_id:
                if raw[0] == run_id:
                    rows.append({c.name: convert(c, v) for c, v in zip(columns, raw, strict=True)})
                    if len(rows) >= chunk:
                        yield run_id, name, rows
                        rows = []
                raw = cursor.fetchone()
            cursors[name] = (cursor, raw)
            if rows:
                yield run_id, name, rows
