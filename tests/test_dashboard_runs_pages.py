"""The Runs table one page at a time (issue 25, item 3): a database with more runs than a page
shows at most `PAGE_ROWS` rows, moves between pages with Previous/Next and `?page=` in the URL,
keeps filters and the sort across pages, and reads badges only for the page shown."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
from dashboard_helpers import add_run, open_app, shown_text
from sqlalchemy import insert

from gradscope.dashboard.tables import PAGE_ROWS
from gradscope.db import frames
from gradscope.db.engine import make_engine
from gradscope.db.models import RunModel
from gradscope.vocab.config import make_config

N_RUNS = 250  # two and a half pages


def runs_table(at) -> pd.DataFrame:  # noqa: ANN001 - AppTest types
    (table,) = [df.value for df in at.dataframe if "diagnosis" in df.value.columns]
    return table


@pytest.fixture
def many_runs(db_path: Path) -> Path:
    """250 finished runs written in one bulk insert (no epochs), the arch alternating and every
    test accuracy distinct, plus one vanishing sigmoid run recorded epoch by epoch, the oldest
    (so it sits on the last page)."""
    engine = make_engine(str(db_path))
    vanishing = add_run(
        engine, arch="sigmoid", grad_norms=(1e-9, 1e-5, 1.0), name="the vanishing one"
    )
    start = datetime(2030, 1, 1, tzinfo=UTC)  # after the recorded run: it stays the oldest
    config = {a: make_config({"arch": a, "depth": 2}).model_dump() for a in ("relu", "resnet")}
    rows = [
        {
            "id": str(uuid.uuid4()),
            "name": f"bulk {k:03d}",
            "status": "completed",
            "config": config[arch],
            "arch": arch,
            "dataset": "moons",
            "depth": 2,
            "width": 32,
            "seed": 0,
            "created_at": start + timedelta(seconds=k),
            "finished_at": start + timedelta(seconds=k),
            "epochs_total": 2,
            "epochs_done": 2,
            "final_test_acc": 0.5 + k / 1000,
            "seq": 10 + k,
        }
        for k in range(N_RUNS - 1)
        for arch in (("relu", "resnet")[k % 2],)
    ]
    with engine.begin() as conn:
        conn.execute(insert(RunModel), rows)
    engine.dispose()
    assert vanishing
    return db_path


def test_a_big_table_shows_one_page_and_moves_between_pages(
    monkeypatch: pytest.MonkeyPatch, many_runs: Path
) -> None:
    at = open_app(monkeypatch, many_runs)
    first = runs_table(at)
    assert len(first) == PAGE_ROWS
    assert first["name"].iloc[0] == "bulk 248"  # newest first
    assert f"Page 1 of 3: rows 1–{PAGE_ROWS} of {N_RUNS}" in shown_text(at)
    assert at.button(key="runs_prev").disabled
    at.button(key="runs_next").click().run()
    second = runs_table(at)
    assert at.query_params["page"] == "2"
    assert len(second) == PAGE_ROWS and not set(second["id"]) & set(first["id"])
    at.button(key="runs_next").click().run()
    last = runs_table(at)
    assert len(last) == N_RUNS - 2 * PAGE_ROWS
    assert at.button(key="runs_next").disabled
    # The recorded run's badge is read for the page it is on.
    vanishing = last.set_index("name").loc["the vanishing one", "diagnosis"]
    assert list(vanishing) == ["vanishing"]
    at.button(key="runs_prev").click().run()
    assert list(runs_table(at)["id"]) == list(second["id"])
    seen = set(first["id"]) | set(second["id"]) | set(last["id"])
    assert len(seen) == N_RUNS  # every run on exactly one page


def test_filter_and_sort_hold_across_pages(
    monkeypatch: pytest.MonkeyPatch, many_runs: Path
) -> None:
    at = open_app(monkeypatch, many_runs)
    at.pills(key="runs_arch").select("relu").run()
    at.selectbox(key="runs_sort").select("test acc").run()
    at.toggle(key="runs_desc").set_value(True).run()
    one = runs_table(at)
    assert len(one) == PAGE_ROWS and set(one["arch"]) == {"relu"}
    assert one["test acc"].is_monotonic_decreasing
    assert "Page 1 of 2" in shown_text(at)
    at.button(key="runs_next").click().run()
    two = runs_table(at)
    assert set(two["arch"]) == {"relu"} and two["test acc"].is_monotonic_decreasing
    assert two["test acc"].max() < one["test acc"].min()  # the order runs on across pages
    assert len(one) + len(two) == 125 and not set(one["id"]) & set(two["id"])
    assert at.pills(key="runs_arch").value == ["relu"]
    assert at.selectbox(key="runs_sort").value == "test acc"


def test_a_changed_filter_starts_again_at_page_one_and_the_url_opens_a_page(
    monkeypatch: pytest.MonkeyPatch, many_runs: Path
) -> None:
    at = open_app(monkeypatch, many_runs, params={"page": "3"})
    assert len(runs_table(at)) == N_RUNS - 2 * PAGE_ROWS  # the linked page
    at.pills(key="runs_diag").select("vanishing").run()  # reads every run's badges
    assert list(runs_table(at)["name"]) == ["the vanishing one"]
    assert at.query_params["page"] == "1"
    assert "Page" not in shown_text(at)  # one page: no page controls


def test_run_ends_of_some_runs_equal_those_runs_in_the_full_read(many_runs: Path) -> None:
    engine = make_engine(str(many_runs))
    runs = frames.runs(engine)
    some = list(runs["id"].iloc[[0, 5, -1]])
    part, whole = frames.run_ends(engine, some), frames.run_ends(engine)
    engine.dispose()
    expected = whole.layers[whole.layers["run_id"].isin(some)].reset_index(drop=True)
    assert not part.layers.empty
    pd.testing.assert_frame_equal(
        part.layers.sort_values(["run_id", "epoch", "layer"]).reset_index(drop=True),
        expected.sort_values(["run_id", "epoch", "layer"]).reset_index(drop=True),
    )
    assert set(part.epochs["run_id"]) == set(whole.epochs["run_id"]) & set(some)


def test_sorting_puts_missing_values_last_and_pages_clamp() -> None:
    from gradscope.dashboard import tables

    table = pd.DataFrame(
        {"test acc": [0.7, None, 0.9, 0.8], "name": ["a", "b", "c", "d"]},
        index=pd.Index(["r1", "r2", "r3", "r4"], name="run_id"),
    )
    assert list(tables.sort_runs(table, "test acc", descending=True).index) == [
        "r3",
        "r4",
        "r1",
        "r2",
    ]
    assert list(tables.sort_runs(table, "test acc").index) == ["r1", "r4", "r3", "r2"]
    assert list(tables.sort_runs(table, tables.NEWEST_FIRST, descending=True).index) == [
        "r4",
        "r3",
        "r2",
        "r1",
    ]
    assert tables.page_count(0, 2) == 1 and tables.page_count(4, 2) == 2
    assert list(tables.page_of(table, 9, size=3).index) == ["r4"]  # past the end: the last page
    assert list(tables.page_of(table, 0, size=3).index) == ["r1", "r2", "r3"]
