"""The gradscope command line (`gradscope --help`)."""

from runner.cli.main import app, main

__all__ = ["app", "main"]
