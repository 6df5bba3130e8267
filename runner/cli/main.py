"""The `gradscope` command. Thin: parses options, calls library functions, prints results.

Each group of commands lives in its own module and registers itself here; shared helpers are in
`runner.cli.common`. Commands import torch only when they train.
"""

from __future__ import annotations

import typer

from runner.cli import (
    annotate_commands,
    browse_commands,
    dashboard_commands,
    queue_commands,
    schema_commands,
    share_commands,
    train_commands,
)

app = typer.Typer(
    help="gradscope: see vanishing gradients happen, measure them, compare the cures.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _module in (
    train_commands,
    browse_commands,
    queue_commands,
    share_commands,
    dashboard_commands,
    schema_commands,
    annotate_commands,
):
    _module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
