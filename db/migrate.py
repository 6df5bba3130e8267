"""Schema upgrades through Alembic (imported only by `gradscope db …` and sharing)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Connection, Engine

from gradscope.db.engine import (
    KNOWN_REVISIONS,
    SCHEMA_REVISION,
    current_revision,
    missing_tables,
)
from gradscope.db.errors import SchemaVersionError, StorageError
from gradscope.db.models import Base
from gradscope.db.transactions import SCHEMA_LOCK, transaction

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


def upgrade(
    engine: Engine, revision: str = "head", *, recreated: list[str] | None = None
) -> tuple[str | None, str]:
    """Upgrade the database to `revision`; returns (before, after). A database stamped with
    a revision this gradscope doesn't know is refused, never touched. At the head, tables of
    the schema that the database lacks are recreated empty (their names appended to
    `recreated`): the stamp alone does not prove the schema."""
    before = current_revision(engine)
    if before is not None and before not in KNOWN_REVISIONS:
        raise SchemaVersionError(
            f"database has schema {before}, newer than this gradscope's {SCHEMA_REVISION}; "
            "upgrade gradscope instead"
        )
    cfg = alembic_config()
    where = engine.url.render_as_string(hide_password=True)
    try:
        # Lock-first: two upgraders (or an upgrader and a creator) take turns.
        with transaction(
            engine, f"cannot upgrade {where}", lock=SCHEMA_LOCK, copies_tables=True
        ) as conn:
            _upgrade_on(conn, cfg, revision, recreated)
    except CommandError as exc:  # Alembic's own refusal (e.g. an unknown revision)
        raise StorageError(f"cannot upgrade {where}: {exc}") from exc
    return before, current_revision(engine) or ""


def _upgrade_on(conn: Connection, cfg: Config, revision: str, recreated: list[str] | None) -> None:
    cfg.attributes["connection"] = conn
    command.upgrade(cfg, revision)
    missing = missing_tables(conn) if revision == "head" else []
    if missing:
        Base.metadata.create_all(conn, tables=[Base.metadata.tables[t] for t in missing])
        if recreated is not None:
            recreated += missing
