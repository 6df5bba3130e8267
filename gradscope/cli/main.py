"""The `gradscope` command. Thin: parses options, calls library functions, prints results.

Each group of commands lives in its own module and registers itself here; shared helpers are in
`gradscope.cli.common`. Commands import torch only when they train.
"""

from __future__ import annotations

import gc
import inspect
import re
from typing import Annotated

import typer

from gradscope.cli import (
    annotate_commands,
    browse_commands,
    cure_commands,
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


def _print_version(wanted: bool) -> None:
    if wanted:
        from importlib.metadata import version

        typer.echo(f"gradscope {version('gradscope')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    pass


for _module in (
    train_commands,
    browse_commands,
    cure_commands,
    queue_commands,
    share_commands,
    dashboard_commands,
    schema_commands,
    annotate_commands,
):
    _module.register(app)

# A sentence ends at a full stop before a capital letter ("e.g. `--arch`" does not end one).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def reflowed(doc: str) -> str:
    """A docstring as help: its paragraphs kept, the line breaks inside each joined. Typer
    keeps a docstring's single line breaks, which cut sentences in the middle at any width
    but the source's."""
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(p.split()) for p in paragraphs)


def command_summary(doc: str) -> str:
    """A command's line in `gradscope --help`: the first sentence of its help."""
    return _SENTENCE_END.split(reflowed(doc).split("\n\n")[0], maxsplit=1)[0]


def _reflow_help(typer_app: typer.Typer) -> None:
    """Every command's help and summary reflowed (see `reflowed`), in groups too."""
    for command in typer_app.registered_commands:
        doc = command.help or (command.callback.__doc__ if command.callback else None)
        if doc:
            command.help = reflowed(doc)
            command.short_help = command.short_help or command_summary(doc)
    for group in typer_app.registered_groups:
        if group.typer_instance is not None:
            _reflow_help(group.typer_instance)


_reflow_help(app)


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
