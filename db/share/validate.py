"""Checking every row and value of a run database someone else sent, before any is trusted.

Types come from the models' column types (an integer column holds integers, a float column
numbers, text columns text of at most their length, valid UTF-8 without NUL); meaning comes
from gradscope's rules (run ids are UUIDs, statuses known, configs valid RunConfigs agreeing
with the run's columns, epochs within 1..epochs, layers within 0..depth, blobs exactly as long
as their shape says, no duplicate keys, no rows without their run). Any problem refuses the
whole file with `ImportRefused`, whose message names the table, the run or row, the column and
why. `gradscope.db.share.source` opens the file and checks its structure first.
"""

from __future__ import annotations

import json
import sqlite3
import struct
import uuid
from collections.abc import Collection, Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    LargeBinary,
    String,
)

from gradscope.db.clock import as_utc
from gradscope.db.share.base import (
    CHILD_TABLES,
    SURROGATE_ID,
    TABLE_ORDER,
    ImportRefused,
    SourceRun,
    content_columns,
    sort_keys,
)
from gradscope.vocab.config import ConfigError, make_config
from gradscope.vocab.custom import CUSTOM_ACTIVATIONS, CUSTOM_ARCH, custom_config_problem
from gradscope.vocab.fields import (
    HIST_SLOTS,
    PEAK_GRAD_FIELDS,
    RUN_CONFIG_COLUMNS,
    RUN_STATUSES,
)
from gradscope.vocab.metrics import MAX_STEP, metric_count_problem, metric_name_problem
from gradscope.vocab.stored_values import (
    MAX_TAGS_PER_RUN,
    metric_problem,
    name_problem,
    tag_problem,
    text_problem,
)
from gradscope.vocab.text import has_unsafe_chars
from gradscope.vocab.warning_kinds import WARNING_KINDS

MAX_TEXT_CHARS = 10_000  # unbounded Text columns (a run's error); finish_run keeps 10,000
MAX_CONFIG_CHARS = 20_000
MAX_GRID_SIZE = 512
MAX_POINTS = 1_000_000
MAX_PROBLEMS = 20
GRAD_HIST_BYTES = HIST_SLOTS * 4
LAYER_KINDS = ("input", "hidden", "block", "output")
LAYER_ACTIVATIONS = ("sigmoid", "relu")
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1
# Text columns whose values may span lines (line breaks and tabs allowed; other controls are
# not): the same rule storing applies (gradscope.vocab.stored_values).
MULTILINE = ("error", "notes")

# sqlite3 decodes SQLite's own error messages strictly: one quoting a damaged schema's bytes
# raises UnicodeDecodeError instead of sqlite3.Error.
SQLITE_ERRORS = (sqlite3.Error, UnicodeDecodeError)


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


# -- values: types first (driven by the models' column types), then meaning ------------------


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
        limit = INT64_MAX if isinstance(kind, BigInteger) else INT32_MAX
        if not -limit <= value <= limit:
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
    # multi-line texts (an error's traceback, notes) may hold line breaks and tabs.
    problem = text_problem(column.name, value, multiline=column.name in MULTILINE)
    if problem:
        raise _Bad(problem)
    return value


def _is_uuid(value: object) -> bool:
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _check_ranges(row: dict[str, Any]) -> None:
    for column, value in row.items():
        if type(value) is float:
            problem = metric_problem(column, value)
            if problem:
                raise _Bad(problem)


def _check_run(row: dict[str, Any]) -> None:
    """A run's meaning: a UUID id, a known status, a valid config agreeing with its columns."""
    if not _is_uuid(row["id"]):
        raise _Bad(f"id must be a UUID, got {_shown(row['id'])}")
    if row["status"] not in RUN_STATUSES:
        raise _Bad(f"status {_shown(row['status'])} is not one of {', '.join(RUN_STATUSES)}")
    problem = name_problem(row["name"])
    if problem:
        raise _Bad(problem)
    if row["arch"] == CUSTOM_ARCH:
        _check_custom_run(row)
    else:
        try:
            cfg = make_config(row["config"])
        except ConfigError as exc:
            detail = str(exc).replace("\n", "; ")
            raise _Bad(f"config is not a valid run configuration: {_cut(detail, 300)}") from None
        for column, field in RUN_CONFIG_COLUMNS.items():
            if row[column] != getattr(cfg, field):
                raise _Bad(
                    f"{column} is {_shown(row[column])} but its config says {getattr(cfg, field)!r}"
                )
    if not 0 <= row["epochs_done"] <= row["epochs_total"]:
        raise _Bad(f"epochs_done {row['epochs_done']} is outside 0..{row['epochs_total']}")
    if row["arch"] != CUSTOM_ARCH and row["group_index"] is not None and row["group_index"] < 0:
        raise _Bad(f"group_index {row['group_index']} is negative")
    _check_ranges(row)


def _check_custom_run(row: dict[str, Any]) -> None:
    """A run recorded with the gradscope API: its config is the user's dict and a model
    summary (gradscope.vocab.custom), not a RunConfig; its length is the epochs it logged."""
    problem = custom_config_problem(row["config"])
    if problem:
        raise _Bad(f"config is not a valid custom run's configuration: {_cut(problem, 300)}")
    for column in ("depth", "width", "seed"):
        if row[column] is not None and row[column] < 0:  # seed None: given no seed
            raise _Bad(f"{column} {row[column]} is negative")


def _check_layer(row: dict[str, Any], custom: bool) -> None:
    """A built-in network's layer: a known kind and activation. A custom run's: any module type
    as its kind, an activation when one was seen, the weight's shape as a JSON list of sizes."""
    if not custom:
        if row["kind"] not in LAYER_KINDS:
            raise _Bad(f"kind {_shown(row['kind'])} is not one of {', '.join(LAYER_KINDS)}")
        if row["activation"] not in LAYER_ACTIVATIONS:
            raise _Bad(f"activation {_shown(row['activation'])} is not sigmoid or relu")
    else:
        if has_unsafe_chars(row["kind"]) or has_unsafe_chars(row["name"]):
            raise _Bad("name or kind contains control characters")
        if row["activation"] not in CUSTOM_ACTIVATIONS:
            shown, known = _shown(row["activation"]), ", ".join(CUSTOM_ACTIVATIONS)
            raise _Bad(f"activation {shown} is not one of {known}")
        if row["shape"] is not None:
            try:
                shape = json.loads(row["shape"], parse_constant=_no_nan)
            except (ValueError, RecursionError):
                raise _Bad(f"shape is not valid JSON: {_shown(row['shape'])}") from None
            if not isinstance(shape, list) or not all(type(n) is int and n >= 0 for n in shape):
                raise _Bad(f"shape must be a list of sizes, got {_shown(shape)}")
    for key in ("fan_in", "fan_out", "n_params"):
        if row[key] < (0 if custom or key == "n_params" else 1):
            raise _Bad(f"{key} {row[key]} is out of range")


def _check_warning(row: dict[str, Any], epochs: int, depth: int) -> None:
    """A live warning: a known kind, in an epoch the run reached (the one it was training when
    it stopped included), a layer of the run, printable text."""
    if row["kind"] not in WARNING_KINDS:
        raise _Bad(f"kind {_shown(row['kind'])} is not one of {', '.join(WARNING_KINDS)}")
    if row["epoch"] is not None and not 1 <= row["epoch"] <= epochs + 1:
        raise _Bad(f"epoch {row['epoch']} is outside the run's 1..{epochs + 1}")
    if row["layer"] is not None and not 0 <= row["layer"] <= depth:
        raise _Bad(f"layer {row['layer']} is outside the run's 0..{depth}")
    if row["step"] is not None and not 1 <= row["step"] <= MAX_STEP:
        raise _Bad(f"step {row['step']} is out of range")
    if row["message"] is not None and (
        len(row["message"]) > 500 or has_unsafe_chars(row["message"])
    ):
        raise _Bad("message is longer than 500 characters or contains control characters")


def _check_child(table: str, row: dict[str, Any], run: dict[str, Any]) -> None:
    """A child row's meaning, against its run: epochs, layers, blob lengths."""
    epochs, depth = run["epochs_total"], run["depth"]
    if table == "run_metrics":
        _check_metric(row, epochs)
        return
    if table == "run_warnings":
        _check_warning(row, epochs, depth)
        return
    if "epoch" in row and not 1 <= row["epoch"] <= epochs:
        raise _Bad(f"epoch {row['epoch']} is outside the run's 1..{epochs}")
    if "layer" in row and not 0 <= row["layer"] <= depth:
        raise _Bad(f"layer {row['layer']} is outside the run's 0..{depth} (depth {depth})")
    _check_ranges(row)
    if table == "run_layers":
        _check_layer(row, custom=run["arch"] == CUSTOM_ARCH)
    elif table == "run_tags":
        problem = tag_problem(row["tag"])
        if problem:
            raise _Bad(problem)
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


def _raise_peak(run: dict[str, Any], row: dict[str, Any]) -> None:
    """The run's peak_grad as the writer keeps it (EpochRecord.peak_grad), one row at a time."""
    values = [abs(v) for k in PEAK_GRAD_FIELDS if (v := row.get(k)) is not None and v == v]
    if values and (run["peak_grad"] is None or max(values) > run["peak_grad"]):
        run["peak_grad"] = max(values)


def _check_metric(row: dict[str, Any], epochs: int) -> None:
    """A free metric (gradscope.vocab.metrics): a valid name; a step and/or an epoch, the epoch
    within 1..epochs + 1 (steps after the last closed epoch are in the one in progress); any
    value, infinities included (NaN is NULL)."""
    problem = metric_name_problem(row["name"])
    if problem:
        raise _Bad(problem)
    step, epoch = row["step"], row["epoch"]
    if step is None and epoch is None:
        raise _Bad("a metric needs a step or an epoch (both are NULL)")
    if step is not None and not 0 <= step < MAX_STEP:
        raise _Bad(f"step {step} is outside 0..{MAX_STEP - 1}")
    if epoch is not None and not 1 <= epoch <= epochs + 1:
        raise _Bad(f"epoch {epoch} is outside the run's 1..{epochs + 1}")


# -- rows: every table in one streaming pass --------------------------------------------------


def _label(table: str, row: dict[str, Any], index: int) -> str:
    """Where a bad value is, for people: the run (short id) and the row's key."""
    run_id = row.get("id" if table == "runs" else "run_id")
    where = f"run {run_id[:8]}" if _is_uuid(run_id) else f"row {index + 1}"
    keys = [f"{k} {row[k]}" for k in ("epoch", "layer") if type(row.get(k)) is int]
    return f"{table} ({', '.join([where, *keys])})"


def _select(name: str, order: bool) -> str:
    columns = ", ".join(quote(c.name) for c in content_columns(name))
    # Ordered by key, duplicates are neighbours: found with one previous key, not a set of
    # millions (SQLite sorts on disk when the file has no index: memory stays bounded).
    by = f" ORDER BY {', '.join(quote(k) for k in sort_keys(name))}" if order else ""
    return f"SELECT {columns} FROM {quote(name)}{by}"


def read_rows(conn: sqlite3.Connection, source: str) -> list[SourceRun]:
    """Every row of every table, checked, in one streaming pass: only the run rows are kept
    (children are read again, run by run, when copied: `stream_children`). Child rows must
    belong to a run of the file. Returns the runs in file order."""
    problems = Problems(source)
    runs: dict[str, SourceRun] = {}
    bad_runs: set[object] = set()  # their rows are not checked again: one message per run
    tag_count: tuple[object, int] = (None, 0)  # (run id, its tags so far)
    # (run id, its metric names, its metric rows so far): ordered by (run_id, id), a run's
    # metrics are neighbours; the set stops growing once it passes the limit.
    metrics: tuple[object, set[str], int] = (None, set(), 0)
    try:
        for name in TABLE_ORDER:
            columns = content_columns(name)
            keys = [] if name in SURROGATE_ID else sort_keys(name)  # no key: may repeat
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
                    if keys and (key in seen or key == previous):
                        raise _Bad("appears twice (duplicate key)")
                    if name == "runs":
                        seen.add(key)
                        # Never the file's word: recomputed from its layer_stats rows below.
                        row["peak_grad"] = None
                        _check_run(row)
                        bad_runs.discard(raw_row["id"])
                        runs[row["id"]] = SourceRun.bare(row)
                        continue
                    previous = key
                    parent = runs.get(row["run_id"])
                    if parent is None:
                        raise _Bad(f"belongs to no run of the file ({_shown(row['run_id'])})")
                    if name == "run_tags":
                        # Ordered by (run_id, tag): a run's tags are neighbours.
                        count = tag_count[1] + 1 if tag_count[0] == row["run_id"] else 1
                        tag_count = (row["run_id"], count)
                        if count > MAX_TAGS_PER_RUN:
                            bad_runs.add(row["run_id"])
                            raise _Bad(f"the run carries more than {MAX_TAGS_PER_RUN} tags")
                    if name == "run_metrics":
                        same = metrics[0] == row["run_id"]
                        names = metrics[1] if same else set()
                        names.add(row["name"])
                        metrics = (row["run_id"], names, metrics[2] + 1 if same else 1)
                        problem = metric_count_problem(len(names), metrics[2])
                        if problem:
                            bad_runs.add(row["run_id"])
                            raise _Bad(problem)
                    _check_child(name, row, parent.run)
                    if name == "layer_stats":
                        _raise_peak(parent.run, row)
                except _Bad as exc:
                    problems.add(f"{label}: {exc}")
    except SQLITE_ERRORS as exc:
        problems.refuse(f"SQLite failed while reading rows: {printable(str(exc))}")
    problems.raise_any()
    return list(runs.values())


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
            columns = content_columns(name)
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
