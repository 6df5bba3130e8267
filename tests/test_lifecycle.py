"""gradscope.db.lifecycle as the one owner of run status changes: create_runs validates, makes CSV
paths absolute and inserts (all or nothing); finish guards; the foreground path writes the runs
row once before epoch 1. (That nothing outside db/transactions.py wraps driver errors by hand:
tests/test_transactions.py.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import Engine, event

from gradscope.db import frames
from gradscope.db.lifecycle import create_runs, delete_runs, finish_run
from gradscope.db.queries import get_run
from gradscope.vocab.config import ConfigError
from gradscope.vocab.records import RunSpec


def test_create_runs_refuses_any_bad_config_and_writes_nothing(engine: Engine) -> None:
    specs = [RunSpec({"depth": 2}), RunSpec({"depth": 0}), RunSpec({"arch": "tanh"})]
    with pytest.raises(ConfigError, match="depth"):
        create_runs(engine, specs)
    assert frames.runs(engine).empty


def test_create_runs_makes_csv_paths_absolute(
    engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative, absolute = (
        RunSpec({"dataset": "csv:data/x.csv"}),
        RunSpec({"dataset": "csv:/d/y.csv"}),
    )
    ids = create_runs(engine, [relative, absolute])
    stored = [get_run(engine, i).config["dataset"] for i in ids]
    assert stored == [f"csv:{tmp_path / 'data' / 'x.csv'}", "csv:/d/y.csv"]
    assert [get_run(engine, i).dataset for i in ids] == stored


def test_runs_are_created_queued_or_running_only(engine: Engine) -> None:
    with pytest.raises(ValueError, match="queued or running"):
        create_runs(engine, [RunSpec({})], status="completed")
    [run_id] = create_runs(engine, [RunSpec({})])
    with pytest.raises(ValueError, match="finished status"):
        finish_run(engine, run_id, "queued", only_if_running=False)
    assert not finish_run(engine, run_id, "completed")  # guarded: it is not running
    assert get_run(engine, run_id).status == "queued"
    assert delete_runs(engine, [run_id]) == 1 and frames.runs(engine).empty


@pytest.mark.slow  # trains a run: torch import and two epochs, seconds on a busy machine
def test_foreground_writes_the_runs_row_once_before_epoch_1(sqlite_engine: Engine) -> None:
    import torch

    from gradscope.runner.foreground import train_foreground

    writes: list[str] = []  # statements that changed a row, up to the first epoch's

    @event.listens_for(sqlite_engine, "after_cursor_execute")
    def record(conn, cursor, statement: str, params, context, executemany) -> None:  # noqa: ANN001
        if cursor.rowcount > 0 and re.match(
            r"\s*(INSERT INTO|UPDATE) (runs|epoch_metrics)\b", statement
        ):
            writes.append(" ".join(statement.split()[:4]))

    run_id, status = train_foreground(
        sqlite_engine, {"depth": "2", "width": "4", "samples": "64", "epochs": "2"}, progress=False
    )
    assert status == "completed"
    before_epoch_1 = writes[: writes.index("INSERT INTO epoch_metrics (run_id,")]
    # The heartbeat thread may touch the row meanwhile (every 2 s); nothing else may.
    heartbeats = "UPDATE runs SET heartbeat_at=?"
    assert [w for w in before_epoch_1 if w != heartbeats] == ["INSERT INTO runs (id,"]
    run = get_run(sqlite_engine, run_id)
    assert run.worker.endswith("(foreground)") and run.device == "cpu"
    assert run.torch_version == torch.__version__ and run.started_at is not None
