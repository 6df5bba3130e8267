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
from gradscope.vocab.config import ConfigError, make_config
from gradscope.vocab.csv_files import precheck
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
    try:
        # Before the database is opened and before torch is loaded: a refusal writes nothing
        # and comes at once.
        cfg = make_config(config_values)
        precheck(cfg)
        check_device(cfg.device)
    except ConfigError as exc:
        fail(str(exc))
    from gradscope.runner.foreground import checked_config, train_foreground

    try:
        checked_config(config_values)
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


def check_device(device: str) -> None:
    """ConfigError unless the device asked for exists here. Only `cuda` is checked, and only
    it loads torch (about 2.5 s): `auto` and `cpu` always work."""
    if device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            "device: cuda was asked for but this machine has no usable CUDA device "
            f"(torch {torch.__version__}); use --device auto or --device cpu, or queue the "
            "run with gradscope submit for a worker on a machine with a GPU"
        )


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
