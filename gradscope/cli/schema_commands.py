"""`gradscope db upgrade|current`: the database's schema version."""

from __future__ import annotations

import typer

from gradscope.cli.common import DbOption, console, fail
from gradscope.db.engine import display_url, make_engine, resolve_db
from gradscope.db.errors import StorageError

db_app = typer.Typer(help="Database schema commands.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(db_app, name="db")


@db_app.command("upgrade")
def db_upgrade(db: DbOption = None) -> None:
    """Upgrade a database's schema to this gradscope's version (creates it if missing)."""
    from gradscope.db.migrate import upgrade

    target = resolve_db(db)
    recreated: list[str] = []
    try:
        before, after = upgrade(make_engine(target, check_schema=False), recreated=recreated)
    except StorageError as exc:  # a read-only or malformed file, in the driver's words
        fail(str(exc).splitlines()[0])
    console.print(f"{display_url(target)}: schema {before or 'none'} -> {after}", highlight=False)
    if recreated:
        console.print(f"recreated missing table(s), empty: {', '.join(recreated)}", highlight=False)


@db_app.command("current")
def db_current(db: DbOption = None) -> None:
    """Print the database's schema version and the one this gradscope writes."""
    from gradscope.db.engine import SCHEMA_REVISION, current_revision

    target = resolve_db(db)
    try:
        revision = current_revision(make_engine(target, check_schema=False, read_only=True))
    except StorageError as exc:  # not a database, damaged, unreadable
        fail(str(exc).splitlines()[0])
    console.print(
        f"database: {revision or 'none'}; this gradscope: {SCHEMA_REVISION}", highlight=False
    )
