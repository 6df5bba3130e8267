"""Engines for SQLite files and PostgreSQL URLs, and the schema-version gate.

A bare path means a SQLite file; a URL (`sqlite:///…`, `postgresql+psycopg://…`) is used as given.
Opening a database creates it at the current schema when empty, and refuses a database whose
schema is older (say which command upgrades it) or newer/unknown (name both versions).
This module deliberately does not import Alembic: the training path must start fast.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from db.errors import SchemaVersionError, StorageError
from db.models import Base

DEFAULT_DB = "gradscope.db"
ENV_VAR = "GRADSCOPE_DB"
# The Alembic revision the models describe; tests check it equals Alembic's head.
SCHEMA_REVISION = "0002_notes_tags_retries"
# Every revision this version knows, oldest first.
KNOWN_REVISIONS = ("0001_initial", "0002_notes_tags_retries")
SQLITE_BUSY_TIMEOUT_MS = 30_000
# An arbitrary constant naming the PostgreSQL advisory lock that serialises schema creation.
_SCHEMA_LOCK_KEY = 0x67726164


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
    return make_url(db).render_as_string(hide_password=True)


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 (DB-API object)
    # WAL lets readers (dashboards) and one writer at a time work without "database is locked";
    # busy_timeout makes writers wait for each other instead of failing at once.
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def make_engine(
    db: str, *, check_schema: bool = True, create: bool = True, pool_size: int | None = None
) -> Engine:
    """An engine for `db` (path or URL), with the schema created or checked. `pool_size`
    caps a PostgreSQL engine's connections (pool plus one overflow), e.g. one per Ray actor."""
    url = to_url(db)
    try:
        if url.startswith("sqlite"):
            path = make_url(url).database
            if path and path != ":memory:":
                if create:
                    Path(path).parent.mkdir(parents=True, exist_ok=True)
                elif not Path(path).is_file():
                    # Connecting would create an empty file; say what is missing instead.
                    raise StorageError(f"no gradscope database at {display_url(db)}")
            engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
            event.listen(engine, "connect", _sqlite_pragmas)
        else:
            pool = {} if pool_size is None else {"pool_size": pool_size, "max_overflow": 1}
            engine = create_engine(url, pool_pre_ping=True, **pool)
        if check_schema:
            ensure_schema(engine, create=create)
    except StorageError:
        raise
    except SQLAlchemyError as exc:
        raise StorageError(f"cannot open database {display_url(db)}: {exc.orig or exc}") from exc
    return engine


def current_revision(engine: Engine) -> str | None:
    """The Alembic revision stamped in the database, or None when it has none."""
    with engine.connect() as conn:
        if not inspect(conn).has_table("alembic_version"):
            return None
        row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        return row[0] if row else None


def ensure_schema(engine: Engine, *, create: bool = True) -> None:
    """Create an empty database at the current schema, or check an existing one's version."""
    with engine.connect() as conn:
        empty = not inspect(conn).get_table_names()
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


def _create_schema(engine: Engine) -> None:
    """Create the schema once, even when several processes open a new database at once.

    Each creator takes the database's write lock first and looks again: whoever comes second
    finds the tables made (a worker and a CLI command often start on a fresh file together).
    """
    with engine.begin() as conn:
        if engine.dialect.name == "sqlite":
            # pysqlite runs DDL outside a transaction; an explicit BEGIN IMMEDIATE both takes
            # the write lock (waiting out busy_timeout) and makes the DDL below one transaction.
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif engine.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SCHEMA_LOCK_KEY})
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
