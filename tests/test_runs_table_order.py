"""The Runs table and lists say what is true (issue 24, item 6): runs created together are
listed in creation order (newest batch first) on the Runs page and by `gradscope runs`, a whole
sweep counting as one batch; the diagnosis label is not cut; `make run` takes a port."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from dashboard_helpers import open_app
from sqlalchemy import Engine, select, update
from typer.testing import CliRunner

from gradscope.cli import app
from gradscope.db.lifecycle import create_runs, queue_sweep
from gradscope.db.models import RunModel
from gradscope.db.transactions import transaction
from gradscope.vocab.records import RunSpec
from gradscope.vocab.sweep import plan_sweep

ROOT = Path(__file__).resolve().parent.parent


def _shuffle_created_at(engine: Engine, ids: list[str]) -> None:
    """As a sweep queued in groups leaves them: a few milliseconds apart, later groups later."""
    with transaction(engine) as conn:
        start = conn.execute(select(RunModel.created_at).where(RunModel.id == ids[0])).scalar()
        for k, run_id in enumerate(ids):
            later = start + timedelta(milliseconds=3 * (k // 4))
            conn.execute(update(RunModel).where(RunModel.id == run_id).values(created_at=later))


def _one_instant(engine: Engine, ids: list[str]) -> None:
    """Runs created in one call share created_at, as PostgreSQL's now() gives them. (SQLite's
    'now' is read again for each row of an executemany, so a batch may straddle a millisecond:
    gradscope.db.lifecycle.create_runs should read the clock once per batch.)"""
    with transaction(engine) as conn:
        start = conn.execute(select(RunModel.created_at).where(RunModel.id == ids[0])).scalar()
        conn.execute(update(RunModel).where(RunModel.id.in_(ids)).values(created_at=start))


def _batches(engine: Engine) -> tuple[list[str], list[str], list[str]]:
    first = create_runs(engine, [RunSpec({"depth": 2, "seed": s}) for s in range(3)])
    _one_instant(engine, first)
    sweep = queue_sweep(engine, plan_sweep({"depth": "2,3,4", "seed": "0,1,2,3"}, name="s"))
    _shuffle_created_at(engine, sweep)
    last = create_runs(engine, [RunSpec({"depth": 3, "seed": s}) for s in range(4)])
    _one_instant(engine, last)
    return first, sweep, last


def test_the_cli_lists_batches_newest_first_and_each_in_creation_order(
    engine: Engine, database: str
) -> None:
    first, sweep, last = _batches(engine)
    listed = CliRunner().invoke(app, ["runs", "--db", database, "--json"])
    assert [r["id"] for r in json.loads(listed.stdout)] == [*last, *sweep, *first]
    limited = CliRunner().invoke(app, ["runs", "--db", database, "--json", "--limit", "2"])
    assert [r["id"] for r in json.loads(limited.stdout)] == last[:2]


def test_the_runs_page_lists_batches_newest_first_and_each_in_creation_order(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database: str
) -> None:
    first, sweep, last = _batches(engine)
    at = open_app(monkeypatch, database)
    (table,) = [df for df in at.dataframe if "diagnosis" in df.value.columns]
    assert list(table.value.index) == [*last, *sweep, *first]
    # The sidebar's queue (oldest first) and the Compare page's offer agree with it.
    at.switch_page("app_pages/compare.py")
    at.run()
    (offer,) = [b for b in at.button if "latest sweep" in b.label]
    offer.click().run()
    assert at.query_params["runs"] == ",".join(sweep)


def test_the_diagnosis_label_is_wide_enough_for_its_longest_text(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database: str
) -> None:
    from gradscope.dashboard.tables import BADGES

    create_runs(engine, [RunSpec({"depth": 2})])
    at = open_app(monkeypatch, database)
    (table,) = [df for df in at.dataframe if "diagnosis" in df.value.columns]
    width = json.loads(table.proto.columns)["diagnosis"]["width"]
    # About 7 px a character at the table's 14 px font, plus the label's padding (24 px).
    assert isinstance(width, int) and width >= 7 * max(len(b) for b in BADGES) + 24
    assert "vanished early" in BADGES


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([], "gradscope dashboard --port 8501"),
        (["PORT=8611"], "gradscope dashboard --port 8611"),
        (["PORT=8611", "ARGS=--no-worker --db x.db"], "--port 8611 --no-worker --db x.db"),
    ],
)
def test_make_run_takes_a_port(args: list[str], expected: str) -> None:
    # -n: print the command; -o: take the installed venv as up to date (nothing is installed).
    # Run under `make test` too: the parent make's variables would add "Entering directory"
    # lines, so they are left out of the child's environment.
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MAKELEVEL", "MFLAGS"}}
    done = subprocess.run(
        ["make", "--no-print-directory", "-n", "-o", ".venv/.installed", "run", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    commands = [line for line in done.stdout.splitlines() if "gradscope dashboard" in line]
    assert len(commands) == 1 and expected in commands[0]
