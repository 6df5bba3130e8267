"""The sidebar (AppTest): the database and worker status, the New run form (queues a run; bad
values get messages next to their fields), the sweep form, and the live queue's cancel."""

from __future__ import annotations

import pytest
from dashboard_helpers import add_run, open_app
from sqlalchemy import Engine
from streamlit.testing.v1 import AppTest

from gradscope.db import frames
from gradscope.db.engine import display_url


def submit(at: AppTest, label: str) -> None:
    """Click a form's submit button; no run() between setting values and this (see NOTES)."""
    (button,) = [b for b in at.form_submit_button if b.label == label]
    button.click().run()


def configs(engine: Engine) -> list[dict]:
    runs = frames.runs(engine)
    return list(frames.selected_runs(engine, list(runs["id"]))["config"])


def test_sidebar_names_the_database_and_the_worker(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database: str
) -> None:
    at = open_app(monkeypatch, database)
    assert at.sidebar.code[0].value == display_url(database)
    assert "Worker not running" in at.sidebar.warning[0].value


def test_new_run_form_queues_a_run(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database: str
) -> None:
    at = open_app(monkeypatch, database)
    at.selectbox(key="new_run_arch").set_value("relu")
    at.number_input(key="new_run_depth").set_value(4)
    at.number_input(key="new_run_epochs").set_value(3)
    at.selectbox(key="new_run_dataset").set_value("circles")
    at.selectbox(key="new_run_optimizer").set_value("sgd")
    at.text_input(key="new_run_lr").set_value("0.05")
    at.text_input(key="new_run_momentum").set_value("0.9")
    at.selectbox(key="new_run_init").set_value("he")
    at.text_input(key="new_run_name").set_value("<b>my</b> *run*")
    submit(at, "Queue run")
    assert not at.exception
    (cfg,) = configs(engine)
    assert (cfg["arch"], cfg["depth"], cfg["epochs"], cfg["dataset"]) == ("relu", 4, 3, "circles")
    assert (cfg["optimizer"], cfg["lr"], cfg["momentum"], cfg["init"]) == ("sgd", 0.05, 0.9, "he")
    assert cfg["width"] == 32 and cfg["seed"] == 0  # untouched fields keep the defaults
    assert frames.runs(engine)["name"].tolist() == ["<b>my</b> *run*"]
    assert "Queued run" in at.sidebar.success[0].value
    # The queue shows it, as plain text.
    assert any(t.value.startswith("<b>my</b> *run*") for t in at.sidebar.text)


def test_invalid_values_are_explained_next_to_their_fields(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database: str
) -> None:
    at = open_app(monkeypatch, database)
    at.number_input(key="new_run_depth").set_value(0)
    at.text_input(key="new_run_lr").set_value("fast")
    at.selectbox(key="new_run_dataset").set_value("csv file")
    submit(at, "Queue run")
    assert not at.exception
    messages = [e.value for e in at.sidebar.error]
    assert any("greater than or equal to 1" in m for m in messages)
    assert any("valid number" in m for m in messages)
    assert any("csv" in m.lower() for m in messages)
    assert frames.runs(engine).empty  # nothing was queued

    # Messages sit right under their field: the depth error follows the depth input.
    tree = list(at.sidebar)
    positions = {getattr(el, "key", None): i for i, el in enumerate(tree)}
    depth_error = next(
        i for i, el in enumerate(tree) if type(el).__name__ == "Error" and "greater" in el.value
    )
    assert depth_error > positions["new_run_depth"]
    assert depth_error < positions["new_run_width"]


def test_momentum_with_adam_is_refused(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database: str
) -> None:
    at = open_app(monkeypatch, database)
    at.text_input(key="new_run_momentum").set_value("0.5")
    submit(at, "Queue run")
    assert any("momentum applies to sgd only" in e.value for e in at.sidebar.error)
    assert frames.runs(engine).empty


def test_sweep_form_queues_the_grid(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database: str
) -> None:
    at = open_app(monkeypatch, database)
    at.text_input(key="new_sweep_name").set_value("depth check")
    at.pills(key="new_sweep_arch").set_value(["sigmoid", "resnet"])
    at.text_input(key="new_sweep_depth").set_value("2, 5")
    at.text_input(key="new_sweep_seed").set_value("0,1,2")
    at.number_input(key="new_sweep_epochs").set_value(2)
    submit(at, "Queue sweep")
    assert not at.exception
    runs = frames.runs(engine)
    assert len(runs) == 2 * 2 * 3
    assert set(runs["sweep_name"]) == {"depth check"} and runs["sweep_id"].nunique() == 1
    grid = {(c["arch"], c["depth"], c["seed"]) for c in configs(engine)}
    assert len(grid) == 12 and {c["epochs"] for c in configs(engine)} == {2}


def test_bad_sweep_queues_nothing(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database: str
) -> None:
    at = open_app(monkeypatch, database)
    at.text_input(key="new_sweep_depth").set_value("2,0,x")
    submit(at, "Queue sweep")
    assert "nothing was queued" in at.sidebar.error[0].value
    assert frames.runs(engine).empty


def test_queue_shows_progress_and_cancels(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database: str
) -> None:
    running = add_run(engine, status="running", epochs=2, name="training")
    queued = add_run(engine, status="queued", name="waiting")
    at = open_app(monkeypatch, database)
    bars = at.sidebar.progress
    assert [b.value for b in bars] == [100, 0]  # running (2 of 2 recorded so far), queued
    at.sidebar.button(key=f"cancel_{queued}").click().run()
    at.sidebar.button(key=f"cancel_{running}").click().run()
    status = frames.runs(engine).set_index("id")
    assert status.loc[queued, "status"] == "cancelled"
    assert status.loc[running, "cancel_requested"]  # its worker stops it within an epoch
    assert len(at.sidebar.progress) == 1
