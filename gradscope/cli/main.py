"""The `gradscope` command. Thin: parses options, calls library functions, prints results.

Each group of commands lives in its own module and registers itself here; shared helpers are in
`gradscope.cli.common`. Commands import torch only when they train.
"""

from __future__ import annotations

import gc

import typer

from gradscope.cli import (
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
    try:
        app()
    finally:
        # Python's shutdown runs a last garbage collection over every object still alive; with
        # torch loaded that is ~0.5 s of a command's wall time (measured: a process that
        # imported the training engine exited 0.7 s after its last line, 0.1 s with this).
        # Nothing needs it: atexit handlers and reference-counted finalizers still run, and
        # the process ends right after. Only the command's entry point does this, not `app`.
        gc.disable()
        gc.freeze()


if __name__ == "__main__":
    main()
