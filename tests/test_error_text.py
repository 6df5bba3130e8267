"""A run's error text is stored the same way on SQLite and PostgreSQL (issue 24, item 13):
an exception text holding NUL (which PostgreSQL refuses in text), ESC or bidi controls is
written escaped, so the final status write succeeds and the user's error is kept."""

from __future__ import annotations

import pytest
from sqlalchemy import Engine

import gradscope
from gradscope.db.queries import get_run


def test_an_exception_with_nul_inside_with_fails_the_run_with_its_error_on_both_backends(
    database: str, engine: Engine
) -> None:
    with pytest.raises(ValueError), gradscope.init(db=database, config={"t": "a\x00b"}) as run:
        run.log_epoch(train_loss=0.5)
        raise ValueError("bad byte \x00 and \x1b[31mred\x1b[0m \u202etxt.exe")
    stored = get_run(engine, run.id)
    assert stored.status == "failed"
    assert stored.error == "ValueError: bad byte \\x00 and \\x1b[31mred\\x1b[0m \\u202etxt.exe"
    assert stored.epochs_done == 1
