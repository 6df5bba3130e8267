"""Opening a run database someone else sent: the file and its structure, before any row.

The file is copied into a private temporary folder first (so it cannot change under us, and the
sender's file is never modified), its 16-byte SQLite header and page geometry are checked before
SQLite parses it; a live WAL database (a `-wal` beside it) is then snapshotted, -wal included,
with SQLite's backup API from a read-only connection (see `wal_snapshot`), and it is opened
read-only (`mode=ro`) with `trusted_schema=OFF`, `query_only=ON` and a cap on value sizes.
Then: `PRAGMA quick_check`; no triggers, views or virtual tables; a known Alembic revision (an
older one is upgraded in the private copy, never in place; a newer or unknown one is refused
naming both versions); every table and column gradscope needs; row counts within limits. Then
`gradscope.db.share.validate` checks every row. Anything wrong raises `ImportRefused` saying
what and why.

Plain `sqlite3` here, not `gradscope.db.transactions`: the file is untrusted and only read; no
engine touches it but Alembic's upgrade of the private copy (`trusted_schema=OFF` on each).
"""

from __future__ import annotations

import re
import sqlite3
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, event

from gradscope.db.engine import KNOWN_REVISIONS, SCHEMA_REVISION, make_engine
from gradscope.db.share.base import TABLES, ImportRefused, SourceFile, rollback_journal
from gradscope.db.share.validate import SQLITE_ERRORS, Problems, printable, quote, read_rows

SQLITE_MAGIC = b"SQLite format 3\x00"
# The largest file an import accepts unless told otherwise, in MiB.
MAX_IMPORT_MB = 512
DEFAULT_MAX_IMPORT_BYTES = MAX_IMPORT_MB * 2**20
# The dashboard's upload limit, for its uploader and Streamlit's server (`server.maxUploadSize`).
# Not 512: Streamlit's uploader writes its limit in decimal units outside Windows and rounds any
# size over 500 MB up to the next unit, so 512 reads "1GB per file". At 500 it reads "500MB per
# file" (and checks 500e6 bytes, 500 MiB on Windows), which is true and within MAX_IMPORT_MB.
DASHBOARD_UPLOAD_MB = 500
MAX_RUNS = 10_000
MAX_ROWS_PER_TABLE = 2_000_000
# SQLite refuses to hand back any string or blob longer than this (the largest legitimate value
# is a run's test points: at most 1,000,000 points of 12 bytes).
MAX_VALUE_BYTES = 16 * 2**20


@contextmanager
def _sqlite_reads(source: str, what: str) -> Iterator[None]:
    """SQLite failing on the file refuses it: "SQLite cannot <what>: <its message>"."""
    try:
        yield
    except SQLITE_ERRORS as exc:
        detail = printable(str(exc))
        # SQLite calls a schema it won't use with trusted_schema=OFF "malformed": say what.
        schema = re.match(r"malformed database schema \((.{1,200}?)\) - (unsafe use of .*)", detail)
        if schema:
            detail = (
                f"its schema object {schema[1]!r} ({schema[2]}) is refused: SQLite does not run "
                "functions from an untrusted file's schema, and gradscope files hold only plain "
                "tables and column indexes"
            )
            raise ImportRefused(source, [detail]) from None
        raise ImportRefused(source, [f"SQLite cannot {what}: {detail}"]) from None


@contextmanager
def private_copy(path: Path, max_bytes: int, source: str) -> Iterator[Path]:
    """A copy of `path` in a private temporary folder, read at most `max_bytes` (+1) bytes."""
    problems = Problems(source)
    try:
        before = path.stat()
        size = before.st_size
    except OSError as exc:
        problems.refuse(f"cannot read the file: {exc.strerror or exc}")
    if not path.is_file():
        problems.refuse("it is not a regular file")
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
            after = path.stat()
        except OSError as exc:
            problems.refuse(f"cannot read the file: {exc.strerror or exc}")
        # A copy of a file rewritten meanwhile mixes old and new pages: say so, rather than
        # calling the file damaged later. (A live WAL database is read as a snapshot instead.)
        changed = (after.st_ino, after.st_size, after.st_mtime_ns) != (
            before.st_ino,
            before.st_size,
            before.st_mtime_ns,
        )
        wal = path.with_name(path.name + "-wal")
        live_wal = wal.is_file() and wal.stat().st_size > 0  # wal_snapshot reads it anew
        if (changed or copied != before.st_size) and not live_wal:
            problems.refuse(
                "the file changed while it was being read (another program is writing it); "
                "import it again once nothing writes to it, or export a copy first"
            )
        yield copy


def check_header(copy: Path, source: str) -> None:
    """Refuse anything that is not a whole SQLite 3 file, before SQLite parses it. Marks the
    private copy as rollback-journal mode, so opening it never involves -wal/-shm files."""
    problems = Problems(source)
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


def wal_snapshot(path: Path, copy: Path, max_bytes: int, source: str) -> Path:
    """When `path` is a live WAL database (a non-empty `-wal` file beside it), a consistent
    snapshot that includes the -wal's committed pages, else `copy` unchanged.

    The main file's header has passed `check_header` (on `copy`) first. The snapshot is taken
    with SQLite's backup API from a read-only connection to the original, so it is what
    `gradscope runs` on that file shows at this moment, writers and all; the copied main file
    alone could hold runs still 'queued' that the -wal has completed, or miss some entirely."""
    wal = path.with_name(path.name + "-wal")
    try:
        wal_size = wal.stat().st_size if wal.is_file() else 0
    except OSError:
        wal_size = 0
    if wal_size == 0:
        return copy
    problems = Problems(source)
    total = copy.stat().st_size + wal_size
    if total > max_bytes:
        problems.refuse(
            f"the file and its -wal are {total:,} bytes together; the limit is {max_bytes:,} bytes"
        )
    snapshot = copy.with_name("snapshot.db")
    with _sqlite_reads(source, "read it with its -wal file"):
        src = _connect_untrusted(path)
        try:
            dst = sqlite3.connect(snapshot)
            try:
                src.backup(dst)  # one read transaction: a consistent snapshot
            finally:
                dst.close()
        finally:
            src.close()
    if snapshot.stat().st_size > max_bytes:
        problems.refuse(f"the database is over the limit of {max_bytes:,} bytes")
    check_header(snapshot, source)
    copy.unlink()
    return snapshot


def _connect_untrusted(path: Path) -> sqlite3.Connection:
    """`path` opened read-only, with SQLite's defences for untrusted files on."""
    conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    # Text that is not UTF-8 must not raise mid-read: keep its bytes as surrogates, and let
    # `convert` refuse such values with a message.
    conn.text_factory = lambda raw: raw.decode("utf-8", "surrogateescape")
    conn.setlimit(sqlite3.SQLITE_LIMIT_LENGTH, MAX_VALUE_BYTES)
    for pragma in (
        "trusted_schema=OFF",  # no functions with side effects from the file's schema
        "query_only=ON",
        "cell_size_check=ON",  # detect damaged b-tree cells instead of reading past them
        "mmap_size=0",
    ):
        conn.execute(f"PRAGMA {pragma}")
    return conn


def open_readonly(copy: Path, source: str) -> sqlite3.Connection:
    """Open the private copy read-only, with SQLite's defences for untrusted files on."""
    with _sqlite_reads(source, "read it"):
        conn = _connect_untrusted(copy)
        result = [r[0] for r in conn.execute("PRAGMA quick_check(10)")]
    if result != ["ok"]:
        conn.close()
        detail = "; ".join(printable(str(r))[:200] for r in result[:3])
        raise ImportRefused(source, [f"the database is damaged (SQLite's quick_check: {detail})"])
    return conn


def check_structure(conn: sqlite3.Connection, source: str) -> str:
    """No triggers, views or virtual tables; a gradscope schema revision. Returns it."""
    problems = Problems(source)
    with _sqlite_reads(source, "read its schema"):
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
            shown = ", ".join(printable(t) for t in sorted(tables)[:8]) or "none"
            problems.refuse(
                "not a gradscope database: it has no schema version (alembic_version) table; "
                f"its tables: {shown}"
            )
        versions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
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
    problems = Problems(source)
    with _sqlite_reads(source, "read its tables"):
        for name, table in TABLES.items():
            have = {row[1] for row in conn.execute(f"PRAGMA table_info({quote(name)})")}
            if not have:
                problems.add(f"table {name!r} is missing")
                continue
            missing = [c.name for c in table.columns if c.name not in have]
            if missing:
                problems.add(f"table {name!r} lacks column(s): {', '.join(missing)}")
        problems.raise_any()
        for name in TABLES:
            count = conn.execute(f"SELECT count(*) FROM {quote(name)}").fetchone()[0]
            limit = MAX_RUNS if name == "runs" else MAX_ROWS_PER_TABLE
            if count > limit:
                problems.add(f"table {name!r} has {count:,} rows; the limit is {limit:,}")
    problems.raise_any()


def _trusted_schema_off(dbapi_connection: sqlite3.Connection, _record: object) -> None:
    dbapi_connection.execute("PRAGMA trusted_schema=OFF")


def upgrade_engine(copy: Path) -> Engine:
    """An engine on the private copy for Alembic, with SQLite's defence for untrusted files
    on every connection: the file's schema (its triggers, views, defaults, indexes) may not
    call functions with side effects while the migration reads and rewrites it."""
    engine = make_engine(str(copy), check_schema=False)  # no connection made yet
    event.listen(engine, "connect", _trusted_schema_off)
    return engine


def upgrade_copy(copy: Path, revision: str, source: str) -> None:
    """Bring the private copy (never the original) up to this gradscope's schema."""
    from gradscope.db.migrate import upgrade  # loads Alembic: only for an older file

    try:
        engine = upgrade_engine(copy)
        try:
            upgrade(engine)
        finally:
            engine.dispose()
        rollback_journal(copy)
    except Exception as exc:  # noqa: BLE001 - whatever a hostile file makes Alembic raise
        raise ImportRefused(
            source, [f"its schema {revision} could not be upgraded to {SCHEMA_REVISION}: {exc}"]
        ) from None


@contextmanager
def open_source(
    path: Path, source: str, max_bytes: int = DEFAULT_MAX_IMPORT_BYTES
) -> Iterator[SourceFile]:
    """Every check, in order; the file's runs with checked values, or ImportRefused. The
    private copy stays open (`SourceFile.conn`) until the block ends, for streaming its rows."""
    with private_copy(path, max_bytes, source) as copy:
        try:
            checked = _read_source(path, copy, source, max_bytes)
        except ImportRefused:
            raise
        except Exception as exc:  # noqa: BLE001 - a hostile file must never end in a traceback
            raise ImportRefused(
                source,
                [
                    f"gradscope could not check it (unexpected {type(exc).__name__}: "
                    f"{printable(str(exc))[:300]}); please report this"
                ],
            ) from exc
        try:
            yield checked
        finally:
            checked.conn.close()


def _read_source(path: Path, copy: Path, source: str, max_bytes: int) -> SourceFile:
    check_header(copy, source)
    copy = wal_snapshot(path, copy, max_bytes, source)
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
    except BaseException:
        conn.close()
        raise
    return SourceFile(revision, upgraded_from, runs, conn)
