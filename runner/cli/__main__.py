"""`python -m runner.cli`: the gradscope command."""

from runner.cli.main import main

main()
