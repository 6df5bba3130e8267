"""`gradscope train`: one run in the foreground."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.text import Text

from gradscope.cli.common import (
    DbOption,
    JsonOption,
    MaxCsvOption,
    console,
    err_console,
    fail,
    open_engine,
    print_json,
)
from gradscope.cli.options import with_config_options
from gradscope.db.errors import StorageError
from gradscope.vocab.config import ConfigError
from gradscope.vocab.text import printable


def register(app: typer.Typer) -> None:
    app.command()(train)


@with_config_options()
def train(
    config_values: dict[str, str],
    db: DbOption = None,
    json_out: JsonOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.")] = False,
    max_csv_mb: MaxCsvOption = None,
) -> None:
    """Train one run in the foreground, recording every epoch, and print its id."""
    from gradscope.runner.foreground import checked_config, train_foreground

    try:
        checked_config(config_values)  # before the database is opened: a refusal writes nothing
        run_id, status = train_foreground(
            open_engine(db), config_values, progress=not (quiet or json_out)
        )
    except (ConfigError, StorageError) as exc:
        fail(str(exc))
    if json_out:
        from gradscope.db.queries import run_document

        print_json(run_document(open_engine(db), run_id))
    else:
        # stdout carries only the id, so `RUN=$(gradscope train ...)` captures just that.
        console.print(run_id, highlight=False)
    _report_end(db, run_id, status)
    if status == "failed":
        raise typer.Exit(1)


def _report_end(db: str | None, run_id: str, status: str) -> None:
    """The final status on stderr, with the run's error text when it did not complete."""
    from gradscope.db.queries import get_run

    line = Text(f"{run_id[:8]} {status}")
    if status != "completed":
        try:
            error = get_run(open_engine(db), run_id).error
        except StorageError:
            error = None
        if error:
            line.append(": " + printable(error), style="red" if status == "failed" else "")
    err_console.print(line, highlight=False, soft_wrap=True)
