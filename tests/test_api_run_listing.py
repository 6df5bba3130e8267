"""A run recorded with the API as the listings show it (issue 21, item 4; issue 22): a failed
run's progress is never 100% (`gradscope runs`, the Runs table, the sidebar's queue), and a run
given no seed shows none (not seed 0) in `runs`, `show`, the Runs table and Compare's labels."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest
from dashboard_helpers import open_app
from typer.testing import CliRunner

import gradscope
from gradscope.cli import app
from gradscope.db import frames
from gradscope.db.engine import make_engine
from gradscope.vocab.custom import run_progress

runner = CliRunner()


def record(db: Path, name: str | None, *, fail: bool, seed: int | None) -> str:
    """Three logged epochs of a user's loop (no model needed), failed by an exception or not."""
    config = {"lr": 0.1} if seed is None else {"lr": 0.1, "seed": seed}
    try:
        with gradscope.init(db=str(db), name=name, config=config, quiet=True) as run:
            for epoch in range(3):
                run.log_epoch(train_loss=1.0 / (epoch + 1))
            if fail:
                raise RuntimeError("the data loader broke")
    except RuntimeError:
        pass
    return run.id


@pytest.fixture
def api_db(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    db = tmp_path / "api.db"
    ids = {
        "broken": record(db, "broken", fail=True, seed=None),
        "fine": record(db, "fine", fail=False, seed=7),
        "anonymous": record(db, None, fail=False, seed=None),
    }
    return db, ids


def test_progress_is_known_only_for_runs_that_ended() -> None:
    assert run_progress("custom", "failed", 3, 3) == (None, "3/?")
    assert run_progress("custom", "running", 3, 3) == (None, "3/?")
    assert run_progress("custom", "completed", 3, 3) == (1.0, "3/3")
    assert run_progress("relu", "failed", 3, 10) == (pytest.approx(0.3), "3/10")
    # A built-in run that failed after its last epoch was written is not shown complete.
    assert run_progress("relu", "failed", 10, 10) == (None, "10/10")
    assert run_progress("relu", "completed", 10, 10) == (1.0, "10/10")


def test_runs_and_show_list_a_failed_api_run_without_full_progress_or_seed(
    api_db: tuple[Path, dict[str, str]],
) -> None:
    db, ids = api_db
    listed = runner.invoke(app, ["runs", "--db", str(db), "--json"])
    assert listed.exit_code == 0, listed.output
    by_id = {r["id"]: r for r in json.loads(listed.stdout)}
    broken, fine = by_id[ids["broken"]], by_id[ids["fine"]]
    assert broken["status"] == "failed" and broken["progress"] is None
    assert fine["status"] == "completed" and fine["progress"] == 1.0
    assert broken["seed"] is None and by_id[ids["anonymous"]]["seed"] is None
    assert fine["seed"] == 7
    table = runner.invoke(app, ["runs", "--db", str(db)]).stdout
    (row,) = [line for line in table.splitlines() if line.startswith(ids["broken"][:8])]
    assert "3/?" in row and "3/3" not in row
    shown = runner.invoke(app, ["show", ids["broken"][:8], "--db", str(db), "--json"])
    assert json.loads(shown.stdout)["seed"] is None
    text = runner.invoke(app, ["show", ids["broken"][:8], "--db", str(db)]).stdout
    assert "seed" not in text


def test_runs_page_shows_a_failed_api_run_without_a_bar_or_a_seed(
    monkeypatch: pytest.MonkeyPatch, api_db: tuple[Path, dict[str, str]]
) -> None:
    db, ids = api_db
    at = open_app(monkeypatch, db)
    (table,) = [d.value for d in at.dataframe if "progress" in d.value.columns]
    rows = table.set_index("name")
    assert math.isnan(rows.loc["broken", "progress"]) and rows.loc["broken", "epochs"] == "3/?"
    assert rows.loc["fine", "progress"] == 1.0 and rows.loc["fine", "epochs"] == "3/3"
    assert pd.isna(rows.loc["broken", "seed"]) and rows.loc["fine", "seed"] == 7
    # Compare's legend: an unnamed run without a seed is not labelled "s0".
    engine = make_engine(str(db))
    labels = frames.run_labels(frames.runs(engine))
    engine.dispose()
    assert " s" not in labels[ids["anonymous"]].split(" · ")[0]
