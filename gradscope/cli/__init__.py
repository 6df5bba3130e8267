"""The gradscope command line (`gradscope --help`)."""

from gradscope.cli.main import app, main

__all__ = ["app", "main"]
