"""Multi-class and regression runs recorded through the API read sensibly on every page: the
Runs table, Sweeps (beside a built-in sweep) and Compare use the runs' own words (no binary
cross-entropy, no P(class 1), no decision map, no accuracy a regression never had), agree on a
model's size, and show the user's config keys."""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path

import pytest
from dashboard_helpers import add_run, assert_ok, chart_titled, charts, open_app, shown_text
from streamlit.testing.v1 import AppTest
from task_runs import record_multiclass, record_regression

from gradscope.db.engine import make_engine

# Words that belong to gradscope's built-in binary classifiers only.
BINARY_WORDS = ("binary cross-entropy", "P(class 1)", "predicted probability", "Decision")


@pytest.fixture
def task_db(db_path: Path) -> tuple[Path, dict[str, str]]:
    """The two API runs beside a built-in sweep of two relu runs."""
    ids = {"multi": record_multiclass(db_path), "reg": record_regression(db_path)}
    engine = make_engine(str(db_path))
    sweep = (str(uuid.uuid4()), "depth sweep")
    for depth in (1, 2):
        add_run(engine, arch="relu", depth=depth, grad_norms=(0.1,) * (depth + 1), sweep=sweep)
    engine.dispose()
    return db_path, ids


def everything_shown(at: AppTest) -> str:
    """The page's text and every chart's spec (titles, axes, legends)."""
    return shown_text(at) + "\n".join(json.dumps(c.spec) for c in charts(at))


def test_runs_page_lists_multiclass_and_regression_runs_by_their_own_size(
    monkeypatch: pytest.MonkeyPatch, task_db: tuple[Path, dict[str, str]]
) -> None:
    db, ids = task_db
    at = open_app(monkeypatch, db)
    (table,) = [d.value for d in at.dataframe if "diagnosis" in d.value.columns]
    for key, name, layers in (("multi", "four classes", 2), ("reg", "regression", 2)):
        row = table.loc[ids[key]]
        assert (row["name"], row["arch"], row["status"]) == (name, "custom", "completed")
        assert row["depth"] == layers  # its weight layers, as Compare says below
        assert list(row["diagnosis"]) == ["healthy"]
    text = everything_shown(at)
    assert not [w for w in BINARY_WORDS if w in text]
    # Compare, on the same runs, states the same size.
    compare = open_app(monkeypatch, db, "compare", {"runs": ",".join(ids.values())})
    assert "model layers = 2" in shown_text(compare)


def test_sweeps_page_keeps_api_runs_out_of_a_built_in_sweep(
    monkeypatch: pytest.MonkeyPatch, task_db: tuple[Path, dict[str, str]]
) -> None:
    db, _ids = task_db
    at = open_app(monkeypatch, db, "sweeps")
    assert_ok(at)
    assert "2 of 2 runs finished" in shown_text(at)
    for chart in charts(at):
        assert not {"four classes", "regression"} & set(map(str, chart.data.get("run_label", [])))
    assert "four classes" not in everything_shown(at)


def test_compare_reads_multiclass_and_regression_runs_in_their_own_words(
    monkeypatch: pytest.MonkeyPatch, task_db: tuple[Path, dict[str, str]]
) -> None:
    db, ids = task_db
    at = open_app(monkeypatch, db, "compare", {"runs": ",".join(ids.values())})
    text = everything_shown(at)
    assert not [w for w in BINARY_WORDS if w in text]
    assert "Decision boundaries" not in [s.value for s in at.subheader]
    # Loss: what each logged; the 4-class run never logged a test loss, which is no divergence.
    (loss,) = chart_titled(at, "Loss")
    assert "loss as logged" in json.dumps(loss.spec) and "diverged" not in json.dumps(loss.spec)
    assert set(loss.data.groupby("run_label")["split"].unique().map(tuple)) == {
        ("train",),
        ("train", "test"),
    }
    # Neither logged an accuracy per epoch: no empty accuracy chart, a line that says why.
    assert not chart_titled(at, "Accuracy")
    assert "No run here logged an accuracy" in text
    # The regression's diagnosis speaks of no class accuracy; the 4-class one judges against
    # its labels' chance level.
    assert "accuracy cannot be judged" not in text and "fit cannot be judged" in text
    assert "chance" in text
    # The configuration table: the user's keys, each run's where it has one.
    (config,) = [d.value for d in at.dataframe if "classes" in d.value.columns]
    assert config.loc["four classes", "classes"] == "4"
    assert config.loc["regression", "target"] == "sum"
    assert "model parameters" in config.columns


def test_a_built_in_run_beside_api_runs_still_counts_its_divergence(
    monkeypatch: pytest.MonkeyPatch, task_db: tuple[Path, dict[str, str]]
) -> None:
    """Leaving out what an API run never logged does not hide a built-in run's NaN loss."""
    db, ids = task_db
    engine = make_engine(str(db))
    bad = add_run(
        engine, arch="relu", depth=1, grad_norms=(0.1, 0.2), status="diverged", test_acc=math.nan
    )
    engine.dispose()
    at = open_app(monkeypatch, db, "compare", {"runs": ",".join([*ids.values(), bad])})
    (acc,) = chart_titled(at, "Accuracy")  # the built-in run has accuracy: the chart is back
    note = acc.spec["title"]["subtitle"]
    # Its own NaN accuracies only (2 epochs; add_run gives train and test the same), not the
    # 12 empty ones of the API runs that never logged accuracy.
    assert note == "4 non-finite value(s) (diverged) not drawn", note
