"""Engines for SQLite files and PostgreSQL URLs, and the schema-version gate.

A bare path means a SQLite file; a URL (`sqlite:///…`, `postgresql+psycopg://…`) is used as given.
Opening a database for writing creates it at the current schema when empty (never a missing
folder); opening it `read_only` creates nothing and changes nothing, not even a SQLite file's
journal mode. Either way a database whose schema is older (say which command upgrades it) or
newer/unknown (name both versions) is refused.
This module deliberately does not import Alembic: the training path must start fast.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from gradscope.db.errors import SchemaVersionError, StorageError
from gradscope.db.models import Base
from gradscope.db.transactions import SCHEMA_LOCK, storage_errors, transaction
from gradscope.vocab.protocol import DB_ENV

DEFAULT_DB = "gradscope.db"
ENV_VAR = DB_ENV
# The Alembic revision the models describe; tests check it equals Alembic's head.
SCHEMA_REVISION = "0004_seed_optional_peak_grad"
# Every revision this version knows, oldest first.
KNOWN_REVISIONS = (
    "0001_initial",
    "0002_notes_tags_retries",
    "0003_metrics_warnings",
    "0004_seed_optional_peak_grad",
)
SQLITE_BUSY_TIMEOUT_MS = 30_000


def resolve_db(db: str | None) -> str:
    """`--db` if given, else $GRADSCOPE_DB, else ./gradscope.db."""
    return db or os.environ.get(ENV_VAR) or DEFAULT_DB


def to_url(db: str) -> str:
    """A URL for SQLAlchemy: URLs pass through, anything else is a SQLite file path."""
    if "://" in db:
        return db
    return f"sqlite:///{Path(db).expanduser().absolute()}"


def display_url(db: str) -> str:
    """The database for people to read: a path, or a URL with its password hidden."""
    if "://" not in db:
        return str(Path(db).expanduser().absolute())
    try:
        return make_url(db).render_as_string(hide_password=True)
    except ArgumentError:
        # Unparseable: show the scheme only (whatever follows may hold a password).
        return db.split("://", 1)[0][:40] + "://..."


# The URL schemes gradscope is built and tested for; anything else is refused by name before
# SQLAlchemy tries to import a driver (mysql:// raised ModuleNotFoundError, issue 14).
SUPPORTED_SCHEMES = ("sqlite", "postgresql", "postgresql+psycopg")


def check_url(db: str) -> str:
    """`db` as a SQLAlchemy URL, or StorageError naming what is wrong with it."""
    url = to_url(db)
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise StorageError(
            f"{display_url(db)!r} is not a database URL or path (expected a SQLite file path, "
            "sqlite:///PATH or postgresql+psycopg://USER@HOST/DB)"
        ) from None
    if parsed.drivername not in SUPPORTED_SCHEMES:
        raise StorageError(
            f"unsupported database URL scheme {parsed.drivername!r}: use a SQLite file path, "
            "sqlite:///PATH or postgresql+psycopg://USER@HOST/DB"
        )
    return url


@contextmanager
def _driver_errors(db: str) -> Iterator[None]:
    """A missing driver, or a bad port or query value in the URL, as one readable line."""
    try:
        yield
    except (ImportError, ValueError) as exc:
        raise StorageError(f"cannot open database {display_url(db)}: {exc}") from exc


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 (DB-API object)
    # WAL lets readers (dashboards) and one writer at a time work without "database is locked";
    # busy_timeout makes writers wait for each other instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    _switch_to_wal(cursor)
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _switch_to_wal(cursor: sqlite3.Cursor) -> None:
    """`PRAGMA journal_mode=WAL`, retried while the file is locked. Switching needs the
    file's exclusive lock, and when several processes open a new file at once SQLite answers
    some of them "database is locked" at once instead of waiting out busy_timeout (each holds
    a read lock the others wait on). Measured here with SQLite 3.40: 8 processes opening a
    fresh file together, 36 such errors in 150 rounds, all at this pragma."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    pause = 0.002
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)  # a backoff between attempts, not a wait for something known
        pause = min(pause * 2, 0.05)


def _sqlite_read_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 (DB-API object)
    # A reader leaves the journal mode alone: switching a shared file to WAL is a write.
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.close()


def writable(path: Path) -> bool:
    """Whether this process may write the SQLite file at `path` and its folder (SQLite writes
    its -wal/-shm/-journal files beside it). False on a read-only mount, even for root."""
    return os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)


def _sqlite_engine(db: str, url: str, *, create: bool, read_only: bool | None) -> Engine:
    """A SQLite engine; see make_engine for `create` and `read_only`."""
    name = make_url(url).database
    if not name or name == ":memory:" or name.startswith("file:"):
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    path = Path(name)
    if not path.exists():
        if not create:
            # Connecting would create an empty file; say what is missing instead.
            raise StorageError(f"no database at {db}")
        if not path.parent.is_dir():
            raise StorageError(f"cannot create database {db}: no folder {path.parent}")
    elif not path.is_file():
        raise StorageError(f"{db} is not a file")
    if read_only is None:
        read_only = path.exists() and not writable(path)
    if not read_only and path.exists():
        # A file from a newer gradscope is refused before a writing connection opens it:
        # that connection would switch the file to WAL (a write) first.
        stamp = _stamped_revision(path)
        if stamp is not None and stamp != SCHEMA_REVISION and stamp not in KNOWN_REVISIONS:
            check_revision(stamp, db)
    if not read_only:
        if path.exists() and not writable(path):
            raise StorageError(
                f"cannot write {db}: the file or its folder is read-only here "
                "(commands that only read, and the dashboard, can still open it)"
            )
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # mode=ro: SQLite never writes the file. Where the folder can't be written either (a
    # read-only mount) a WAL file's -shm can't be made, so the file is opened immutable: no
    # locks, no -wal/-shm (no writer can exist on such a medium anyway).
    mode = "mode=ro" if os.access(path.parent, os.W_OK) else "immutable=1"
    uri = f"file:{quote(str(path.absolute()))}?{mode}"

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(
            uri, uri=True, timeout=SQLITE_BUSY_TIMEOUT_MS / 1000, check_same_thread=False
        )

    engine = create_engine(url, creator=connect)
    event.listen(engine, "connect", _sqlite_read_pragmas)
    return engine


def make_engine(
    db: str,
    *,
    check_schema: bool = True,
    create: bool = True,
    read_only: bool | None = False,
    pool_size: int | None = None,
) -> Engine:
    """An engine for `db` (path or URL), with the schema created (`create`) or checked.

    `read_only=True`: for commands that only read. Creates nothing (a missing SQLite file is
    StorageError "no database at <db>") and writes nothing: a SQLite file is opened `mode=ro`
    (or `immutable=1` where its folder is read-only) with its journal mode untouched, and
    PostgreSQL sessions default to read-only transactions. `read_only=None`: read-only only
    when the SQLite file exists and can't be written (the dashboard). With `read_only=False` a
    file that can't be written is refused in one line, before anything is tried.
    `pool_size` caps a PostgreSQL engine's connections (pool plus one overflow), e.g. one per
    Ray actor.
    """
    url = check_url(db)
    if read_only:
        create = False
    with storage_errors(f"cannot open database {display_url(db)}"), _driver_errors(db):
        if url.startswith("sqlite"):
            engine = _sqlite_engine(db, url, create=create, read_only=read_only)
        elif read_only and url.startswith("postgresql"):
            engine = create_engine(
                url,
                pool_pre_ping=True,
                connect_args={"options": "-c default_transaction_read_only=on"},
            )
        else:
            pool = {} if pool_size is None else {"pool_size": pool_size, "max_overflow": 1}
            engine = create_engine(url, pool_pre_ping=True, **pool)
        if check_schema:
            ensure_schema(engine, create=create)
    return engine


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision stamped in the database, or None when it has none. A file that is
    not a database, or a damaged one, is StorageError in the driver's own words."""
    where = engine.url.render_as_string(hide_password=True)
    with transaction(engine, f"cannot read the schema version of {where}") as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        return row[0] if row else None


def ensure_schema(engine: Engine, *, create: bool = True) -> None:
    """Create an empty database at the current schema, or check an existing one's version."""
    with transaction(engine, f"cannot open database {_where(engine)}") as conn:
        tables = set(inspect(conn).get_table_names())
    empty = not tables
    if empty:
        if not create:
            raise StorageError(
                f"{engine.url.render_as_string(hide_password=True)} is empty: no gradscope "
                "database yet (any gradscope command that writes, or `gradscope db upgrade`, "
                "creates one)"
            )
        _create_schema(engine)
    revision = current_revision(engine)
    check_revision(revision, engine.url.render_as_string(hide_password=True))
    # The stamp alone is not the schema: a file that lost a table would fail later with
    # "no such table" in the middle of a run.
    missing = sorted(set(Base.metadata.tables) - tables) if not empty else []
    if missing:
        raise SchemaVersionError(
            f"{_where(engine)} has schema {revision} but lacks the table(s) {', '.join(missing)}."
            f" Recreate them (empty) with: gradscope db upgrade --db {_where(engine)}"
        )


def missing_tables(conn: Connection) -> list[str]:
    """The tables of this gradscope's schema that the database lacks."""
    return sorted(set(Base.metadata.tables) - set(inspect(conn).get_table_names()))


def _stamped_revision(path: Path) -> str | None:
    """A SQLite file's schema stamp, read without writing anything (mode=ro); None when it
    has none or cannot be read (opening it properly then says why)."""
    uri = f"file:{quote(str(path.absolute()))}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True)) as conn:
            row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except (sqlite3.Error, UnicodeDecodeError):
        return None
    return row[0] if row and isinstance(row[0], str) else None


def _create_schema(engine: Engine) -> None:
    """Create the schema once, even when several processes open a new database at once.

    Each creator takes the database's write lock first and looks again: whoever comes second
    finds the tables made (a worker and a CLI command often start on a fresh file together).
    """
    # Lock-first: SQLite's BEGIN IMMEDIATE also makes the DDL below one transaction.
    with transaction(engine, f"cannot create database {_where(engine)}", lock=SCHEMA_LOCK) as conn:
        if inspect(conn).get_table_names():
            return
        Base.metadata.create_all(conn)
        conn.execute(
            text(
                "CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL, "
                "CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num))"
            )
        )
        conn.execute(text("INSERT INTO alembic_version VALUES (:v)"), {"v": SCHEMA_REVISION})


def _where(engine: Engine) -> str:
    """The database for messages, as display_url shows it: a SQLite file's path, else the URL
    with its password hidden."""
    if engine.dialect.name == "sqlite" and engine.url.database:
        return engine.url.database
    return engine.url.render_as_string(hide_password=True)


def check_revision(revision: str | None, where: str) -> None:
    """Raise SchemaVersionError unless `revision` is the one this version of gradscope writes."""
    if revision == SCHEMA_REVISION:
        return
    if revision is None:
        raise SchemaVersionError(
            f"{where} is not a gradscope database (it has tables but no schema version)."
        )
    if revision in KNOWN_REVISIONS:
        raise SchemaVersionError(
            f"{where} has schema {revision}, older than this gradscope's {SCHEMA_REVISION}. "
            f"Upgrade it with: gradscope db upgrade --db {where}"
        )
    raise SchemaVersionError(
        f"{where} has schema {revision}, which this gradscope (schema {SCHEMA_REVISION}) does "
        "not know: it was written by a newer gradscope. Upgrade gradscope to open it."
    )
