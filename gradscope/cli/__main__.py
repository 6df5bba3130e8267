"""`python -m gradscope.cli`: the gradscope command."""

from gradscope.cli.main import main

main()
