"""Reading a run database someone else sent: nothing in it is trusted until checked.

The file is copied into a private temporary folder first (so it can't change under us and is
never modified in place), its 16-byte SQLite header and page geometry are checked before SQLite
sees it, and it is opened read-only with `trusted_schema=OFF` and `query_only=ON`. Then:
`quick_check`; no triggers, views or virtual tables; a known Alembic revision (an older one is
upgraded in the private copy); every table and column gradscope needs; row counts; and every
value's type and range. Anything wrong refuses the whole file with `ImportRefused`, whose message
says which table, row and column and why. Rows are read with plain `sqlite3`; this module never
writes to any database but its own temporary copy.
"""

from __future__ import annotations

import json
import sqlite3
import struct
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import JSON, Boolean, Column, DateTime, Float, Integer, LargeBinary, String, Table

from db.clock import as_utc
from db.engine import KNOWN_REVISIONS, SCHEMA_REVISION
from db.errors import StorageError
from db.models import HIST_BINS, RUN_STATUSES, Base
from runner.config import ConfigError, make_config

SQLITE_MAGIC = b"SQLite format 3\x00"
DEFAULT_MAX_IMPORT_BYTES = 512 * 2**20
MAX_RUNS = 10_000
MAX_ROWS_PER_TABLE = 2_000_000
MAX_TEXT_CHARS = 10_000  # unbounded Text columns (a run's error); finish_run keeps 10,000
MAX_CONFIG_CHARS = 20_000
MAX_GRID_SIZE = 512
MAX_POINTS = 1_000_000
# SQLite refuses to hand back any string or blob longer than this (the largest legitimate value
# is a run's test points: at most MAX_POINTS * 12 bytes).
MAX_VALUE_BYTES = 16 * 2**20
MAX_PROBLEMS = 20
GRAD_HIST_BYTES = (HIST_BINS + 2) * 4
LAYER_KINDS = ("input", "hidden", "block", "output")
LAYER_ACTIVATIONS = ("sigmoid", "relu")
INT32_MAX = 2**31 - 1

# Parents first: the order rows are inserted in.
TABLE_ORDER = (
    "runs",
    "run_layers",
    "epoch_metrics",
    "layer_stats",
    "decision_grids",
    "run_points",
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
    runs: list[SourceRun]


class _Problems:
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


# ---------------------------------------------------------------------------------------------
# The file: copy, header, opening, structure
# ---------------------------------------------------------------------------------------------


@contextmanager
def private_copy(path: Path, max_bytes: int, source: str) -> Iterator[Path]:
    """A copy of `path` in a private temporary folder, read at most `max_bytes` (+1) bytes."""
    problems = _Problems(source)
    try:
        size = path.stat().st_size
    except OSError as exc:
        problems.refuse(f"cannot read the file: {exc.strerror or exc}")
    if size > max_bytes:
        problems.refuse(f"the file is {size:,} bytes; the limit is {max_bytes:,} bytes")
    with tempfile.TemporaryDirectory(prefix="gradscope-import-") as tmp:
        copy = Path(tmp) / "source.db"
        copied = 0
        try:
            with path.open("rb") as src, copy.open("wb") as dst:
                while chunk := src.read(2**20):
                    copied += len(chunk)
                    if copied > max_bytes:  # it grew while we read it
                        problems.refuse(f"the file is over the limit of {max_bytes:,} bytes")
                    dst.write(chunk)
        except OSError as exc:
            problems.refuse(f"cannot read the file: {exc.strerror or exc}")
        yield copy


def check_header(copy: Path, source: str) -> None:
    """Refuse anything that is not a whole SQLite 3 file, before SQLite parses it. Marks the
    private copy as rollback-journal mode, so opening it never involves -wal/-shm files."""
    problems = _Problems(source)
    size = copy.stat().st_size
    with copy.open("rb") as f:
        head = f.read(100)
    if size == 0:
        problems.refuse("the file is empty; it is not a SQLite database")
    if len(head) < 100 or head[:16] != SQLITE_MAGIC:
        problems.refuse(
            f"not a SQLite database: it starts with {head[:16]!r}, "
            f"a SQLite 3 file starts with {SQLITE_MAGIC!r}"
        )
    page_size = int.from_bytes(head[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        problems.refuse(f"damaged SQLite header: page size {page_size} is impossible")
    if head[18] not in (1, 2) or head[19] not in (1, 2):
        problems.refuse("the SQLite file format version is not one this SQLite reads")
    if size % page_size:
        problems.refuse(
            f"the file is truncated or damaged: {size:,} bytes is not a whole number of "
            f"{page_size}-byte pages"
        )
    pages = int.from_bytes(head[28:32], "big")
    header_size_valid = head[92:96] == head[24:28]  # "version-valid-for" == change counter
    if header_size_valid and pages * page_size > size:
        problems.refuse(
            f"the file is truncated: its header says {pages * page_size:,} bytes, it has {size:,}"
        )
    with copy.open("r+b") as f:
        f.seek(18)
        f.write(b"\x01\x01")


def open_readonly(copy: Path, source: str) -> sqlite3.Connection:
    """Open the private copy read-only, with SQLite's defences for untrusted files on."""
    try:
        conn = sqlite3.connect(f"{copy.as_uri()}?mode=ro", uri=True)
        conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
        for pragma in (
            "trusted_schema=OFF",  # no functions with side effects from the file's schema
            "query_only=ON",
            "cell_size_check=ON",  # detect damaged b-tree cells instead of reading past them
            "mmap_size=0",
        ):
            conn.execute(f"PRAGMA {pragma}")
        result = [r[0] for r in conn.execute("PRAGMA quick_check(10)")]
    except sqlite3.Error as exc:
        raise ImportRefused(source, [f"SQLite cannot read it: {exc}"]) from None
    if result != ["ok"]:
        conn.close()
        detail = "; ".join(str(r)[:200] for r in result[:3])
        raise ImportRefused(source, [f"the database is damaged (SQLite's quick_check: {detail})"])
    return conn


def check_structure(conn: sqlite3.Connection, source: str) -> str:
    """No triggers, views or virtual tables; a gradscope schema revision. Returns it."""
    problems = _Problems(source)
    try:
        objects = conn.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
        for kind, name, sql in objects:
            if kind in ("trigger", "view"):
                problems.add(
                    f"it contains a {kind} ({name!r}); gradscope files never have {kind}s, "
                    "and one could act on the database it is read into"
                )
            elif kind == "table" and str(sql or "").lstrip().upper().startswith("CREATE VIRTUAL"):
                problems.add(f"it contains a virtual table ({name!r}); gradscope files have none")
        problems.raise_any()
        tables = {name for kind, name, _ in objects if kind == "table"}
        if "alembic_version" not in tables:
            shown = ", ".join(sorted(tables)[:8]) or "none"
            problems.refuse(
                "not a gradscope database: it has no schema version (alembic_version) table; "
                f"its tables: {shown}"
            )
        versions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error as exc:
        raise ImportRefused(source, [f"SQLite cannot read its schema: {exc}"]) from None
    if len(versions) != 1 or not isinstance(versions[0][0], str):
        problems.refuse(f"its schema version table is damaged ({len(versions)} rows)")
    revision = versions[0][0]
    if revision != SCHEMA_REVISION and revision not in KNOWN_REVISIONS:
        problems.refuse(
            f"it has schema version {revision[:64]!r}, which this gradscope (schema "
            f"{SCHEMA_REVISION}) does not know: it was written by a newer gradscope. "
            "Upgrade gradscope to import it."
        )
    return revision


def check_columns(conn: sqlite3.Connection, source: str) -> None:
    """Every table and column gradscope reads must exist; row counts within the limits."""
    problems = _Problems(source)
    try:
        for name, table in TABLES.items():
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({_q(name)})")}
            if not have:
                problems.add(f"table {name!r} is missing")
                continue
            missing = [c.name for c in table.columns if c.name not in have]
            if missing:
                problems.add(f"table {name!r} lacks column(s): {', '.join(missing)}")
        problems.raise_any()
        for name in TABLES:
            count = conn.execute(f"SELECT count(*) FROM {_q(name)}").fetchone()[0]
            limit = MAX_RUNS if name == "runs" else MAX_ROWS_PER_TABLE
            if count > limit:
                problems.add(f"table {name!r} has {count:,} rows; the limit is {limit:,}")
    except sqlite3.Error as exc:
        raise ImportRefused(source, [f"SQLite cannot read its tables: {exc}"]) from None
    problems.raise_any()


def _q(identifier: str) -> str:
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
    if isinstance(kind, DateTime):
        try:
            if len(value) > 40:
                raise ValueError
            return as_utc(datetime.fromisoformat(value))
        except ValueError:
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
    return value


def _is_uuid(value: object) -> bool:
    try:
        return isinstance(value, str) and str(uuid.UUID(value)) == value
    except ValueError:
        return False


def _check_run(row: dict[str, Any]) -> None:
    """A run's meaning: a UUID id, a known status, a valid config agreeing with its columns."""
    if not _is_uuid(row["id"]):
        raise _Bad(f"id must be a UUID, got {_shown(row['id'])}")
    if row["status"] not in RUN_STATUSES:
        raise _Bad(f"status {_shown(row['status'])} is not one of {', '.join(RUN_STATUSES)}")
    name = row["name"]
    if name is not None and any(ord(c) < 32 for c in name):
        raise _Bad("name contains control characters")
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


def _check_child(table: str, row: dict[str, Any], run: dict[str, Any]) -> None:
    """A child row's meaning, against its run: epochs, layers, blob lengths."""
    epochs, depth = run["epochs_total"], run["depth"]
    if "epoch" in row and not 1 <= row["epoch"] <= epochs:
        raise _Bad(f"epoch {row['epoch']} is outside the run's 1..{epochs}")
    if "layer" in row and not 0 <= row["layer"] <= depth:
        raise _Bad(f"layer {row['layer']} is outside the run's 0..{depth} (depth {depth})")
    if table == "run_layers":
        if row["kind"] not in LAYER_KINDS:
            raise _Bad(f"kind {_shown(row['kind'])} is not one of {', '.join(LAYER_KINDS)}")
        if row["activation"] not in LAYER_ACTIVATIONS:
            raise _Bad(f"activation {_shown(row['activation'])} is not sigmoid or relu")
        for key in ("fan_in", "fan_out", "n_params"):
            if row[key] < (0 if key == "n_params" else 1):
                raise _Bad(f"{key} {row[key]} is out of range")
    elif table == "layer_stats":
        hist = row["grad_hist"]
        if hist is not None:
            if len(hist) != GRAD_HIST_BYTES:
                raise _Bad(f"grad_hist is {len(hist)} bytes; it must be {GRAD_HIST_BYTES}")
            if min(struct.unpack(f"<{HIST_BINS + 2}i", hist)) < 0:
                raise _Bad("grad_hist holds a negative count")
    elif table == "decision_grids":
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
    keys = [f"{k} {row[k]}" for k in ("epoch", "layer") if isinstance(row.get(k), int)]
    return f"{table} {', '.join([where, *keys])}"


def read_rows(conn: sqlite3.Connection, source: str) -> list[SourceRun]:
    """Every row of every table, checked. Child rows must belong to a run of the file."""
    problems = _Problems(source)
    runs: dict[str, SourceRun] = {}
    bad_runs: set[object] = set()  # their rows are not checked again: one message per run
    try:
        for name in TABLE_ORDER:
            table = TABLES[name]
            columns = list(table.columns)
            keys = _key_columns(table)
            seen: set[tuple] = set()
            select = f"SELECT {', '.join(_q(c.name) for c in columns)} FROM {_q(name)}"
            for index, raw in enumerate(conn.execute(select)):
                raw_row = dict(zip((c.name for c in columns), raw, strict=True))
                label = _label(name, raw_row, index)
                try:
                    row = {c.name: convert(c, v) for c, v in zip(columns, raw, strict=True)}
                    key = tuple(row[k] for k in keys)
                    if key in seen:
                        raise _Bad("appears twice (duplicate key)")
                    seen.add(key)
                    if name == "runs":
                        bad_runs.add(raw_row["id"])
                        _check_run(row)
                        bad_runs.discard(raw_row["id"])
                        runs[row["id"]] = SourceRun(row, {t: [] for t in CHILD_TABLES})
                        continue
                    parent = runs.get(row["run_id"])
                    if parent is None and raw_row["run_id"] in bad_runs:
                        continue
                    if parent is None:
                        raise _Bad(f"belongs to no run of the file ({_shown(row['run_id'])})")
                    _check_child(name, row, parent.run)
                    parent.children[name].append(row)
                except _Bad as exc:
                    problems.add(f"{label}: {exc}")
    except sqlite3.Error as exc:
        problems.refuse(f"SQLite failed while reading rows: {exc}")
    problems.raise_any()
    return list(runs.values())


# ---------------------------------------------------------------------------------------------
# The whole check
# ---------------------------------------------------------------------------------------------


def upgrade_copy(copy: Path, revision: str, source: str) -> None:
    """Bring the private copy (never the original) up to this gradscope's schema."""
    from db.engine import make_engine
    from db.migrate import upgrade

    try:
        engine = make_engine(str(copy), check_schema=False)
        try:
            upgrade(engine)
        finally:
            engine.dispose()
        with sqlite3.connect(copy) as conn:  # back to one self-contained file, no -wal
            conn.execute("PRAGMA journal_mode=DELETE")
        conn.close()
    except Exception as exc:  # noqa: BLE001 - whatever a hostile file makes Alembic raise
        raise ImportRefused(
            source, [f"its schema {revision} could not be upgraded to {SCHEMA_REVISION}: {exc}"]
        ) from None


def read_source(path: Path, source: str, max_bytes: int = DEFAULT_MAX_IMPORT_BYTES) -> SourceFile:
    """Every check, in order; the file's runs with checked values, or ImportRefused."""
    with private_copy(path, max_bytes, source) as copy:
        check_header(copy, source)
        conn = open_readonly(copy, source)
        try:
            revision = check_structure(conn, source)
            upgraded_from = None
            if revision != SCHEMA_REVISION:  # older but known: upgrade the copy, check again
                conn.close()
                upgrade_copy(copy, revision, source)
                upgraded_from = revision
                conn = open_readonly(copy, source)
                revision = check_structure(conn, source)
                if revision != SCHEMA_REVISION:
                    raise ImportRefused(source, [f"upgrading left it at schema {revision}"])
            check_columns(conn, source)
            runs = read_rows(conn, source)
        finally:
            conn.close()
    return SourceFile(revision, upgraded_from, runs)
