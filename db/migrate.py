"""Schema upgrades through Alembic (imported only by `gradscope db …` and sharing)."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine

from gradscope.db.engine import KNOWN_REVISIONS, SCHEMA_REVISION, current_revision
from gradscope.db.errors import SchemaVersionError, StorageError
from gradscope.db.transactions import storage_errors

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head() or ""


def upgrade(engine: Engine, revision: str = "head") -> tuple[str | None, str]:
    """Upgrade the database to `revision`; returns (before, after). A database stamped with
    a revision this gradscope doesn't know is refused, never touched."""
    before = current_revision(engine)
    if before is not None and before not in KNOWN_REVISIONS:
        raise SchemaVersionError(
            f"database has schema {before}, newer than this gradscope's {SCHEMA_REVISION}; "
            "upgrade gradscope instead"
        )
    cfg = alembic_config()
    where = engine.url.render_as_string(hide_password=True)
    try:
        with storage_errors(f"cannot upgrade {where}"), engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    except CommandError as exc:  # Alembic's own refusal (e.g. an unknown revision)
        raise StorageError(f"cannot upgrade {where}: {exc}") from exc
    return before, current_revision(engine) or ""
