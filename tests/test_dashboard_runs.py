"""The Runs page (AppTest on real databases): the table, filters, the empty state and its
"Run the classic comparison", and cancelling and deleting the selected runs."""

from __future__ import annotations

from pathlib import Path

import pytest
from dashboard_helpers import APP, add_run, open_app, shown_text, shows_literally
from sqlalchemy import Engine, text
from streamlit.testing.v1 import AppTest

from gradscope.db import frames
from gradscope.db.engine import make_engine


def runs_table(at):  # noqa: ANN001, ANN201 - AppTest types
    tables = [df for df in at.dataframe if "diagnosis" in df.value.columns]
    assert len(tables) == 1
    return tables[0].value


def test_runs_table_shows_the_seeded_runs_with_diagnosis(
    monkeypatch: pytest.MonkeyPatch, seeded_db: Path
) -> None:
    at = open_app(monkeypatch, seeded_db)
    table = runs_table(at).set_index("name")
    assert set(table.index) == {"seed sigmoid", "seed relu", "seed resnet"}
    assert (table["status"] == "completed").all()
    assert (table["progress"] == 1.0).all()
    assert list(table.loc["seed sigmoid", "diagnosis"]) == ["vanishing"]
    assert table.loc["seed sigmoid", "test acc"] == pytest.approx(0.5, abs=0.05)
    assert table.loc["seed resnet", "test acc"] > 0.6
    assert (table["depth"] == 6).all() and set(table["arch"]) == {"sigmoid", "relu", "resnet"}
    assert "3 of 3 runs" in shown_text(at)


def test_filters_narrow_the_table(monkeypatch: pytest.MonkeyPatch, seeded_db: Path) -> None:
    at = open_app(monkeypatch, seeded_db)
    at.pills(key="runs_arch").select("sigmoid").run()
    assert list(runs_table(at)["name"]) == ["seed sigmoid"]
    at.pills(key="runs_arch").unselect("sigmoid").run()
    at.text_input(key="runs_search").set_value("RES").run()
    assert list(runs_table(at)["name"]) == ["seed resnet"]
    at.text_input(key="runs_search").set_value("").run()
    at.pills(key="runs_diag").select("vanishing").run()
    assert list(runs_table(at)["name"]) == ["seed sigmoid"]
    at.pills(key="runs_status").select("completed").run()
    assert "1 of 3 runs" in shown_text(at)


def test_empty_database_offers_the_classic_comparison(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database: str
) -> None:
    at = open_app(monkeypatch, database)
    assert "No runs yet" in shown_text(at)
    assert not at.dataframe
    at.button[0].click().run()  # "Run the classic comparison"
    runs = frames.selected_runs(engine, list(frames.runs(engine)["id"]))
    assert sorted(runs["arch"]) == ["relu", "resnet", "sigmoid"]
    assert set(runs["status"]) == {"queued"}
    assert set(runs["sweep_name"]) == {"classic comparison"}
    for cfg in runs["config"]:
        assert (cfg["dataset"], cfg["depth"], cfg["width"]) == ("moons", 10, 32)
        assert (cfg["optimizer"], cfg["lr"], cfg["epochs"]) == ("adam", 1e-3, 20)
    # The page now lists the queued runs, already selected for Compare.
    table = runs_table(at)
    assert list(table["status"]) == ["queued"] * 3
    assert at.query_params["runs"].count(",") == 2


def test_cancel_and_delete_the_selected_runs(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database: str
) -> None:
    queued = add_run(engine, status="queued", name="waiting")
    done = add_run(engine, name="finished")
    add_run(engine, name="kept")
    at = open_app(monkeypatch, database, params={"runs": f"{queued},{done}"})
    buttons = {b.label: b for b in at.button}
    buttons["Cancel 1 run(s)"].click().run()  # only the queued one can be cancelled
    status = frames.runs(engine).set_index("id")["status"]
    assert status[queued] == "cancelled" and status[done] == "completed"

    buttons = {b.label: b for b in at.button}
    buttons["Delete 2 run(s)"].click().run()
    assert "cannot be undone" in shown_text(at)
    assert len(frames.runs(engine)) == 3  # nothing deleted before confirming
    at.button(key="delete_yes").click().run()
    assert list(frames.runs(engine)["name"]) == ["kept"]
    assert list(runs_table(at)["name"]) == ["kept"]


def test_unreadable_database_shows_what_to_do(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    not_a_db = tmp_path / "notes.db"
    not_a_db.write_text("these are my notes, not a database\n" * 100)
    monkeypatch.setenv("GRADSCOPE_DB", str(not_a_db))
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert not at.exception  # an error message, not a traceback
    assert "could not be read" in at.error[0].value
    assert "gradscope dashboard --db" in shown_text(at)


def test_compare_button_opens_compare_on_the_selected_runs(
    monkeypatch: pytest.MonkeyPatch, seeded_db: Path
) -> None:
    engine = make_engine(str(seeded_db))
    ids = list(frames.runs(engine)["id"])[:2]
    engine.dispose()
    at = open_app(monkeypatch, seeded_db, params={"runs": ",".join(ids)})
    (button,) = [b for b in at.button if b.label == "Compare 2 run(s)"]
    button.click().run()
    assert at.title[0].value == "Compare"
    assert at.query_params["runs"] == ",".join(ids)
    assert len(at.multiselect(key="compare_runs").value) == 2


def test_dataset_paths_are_shown_as_typed_in_the_filter(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database: str
) -> None:
    dataset = "csv:/data/*bold* [x](http://example.com)"  # absolute: stored as typed
    add_run(engine, dataset=dataset, status="queued")
    at = open_app(monkeypatch, database)
    (option,) = at.pills(key="runs_dataset").options  # pill labels are Markdown
    assert shows_literally(option, dataset), option
    at.pills(key="runs_dataset").select(dataset).run()
    assert list(runs_table(at)["dataset"]) == [dataset]


def test_cancel_counts_only_the_runs_it_cancelled(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database: str
) -> None:
    waiting = add_run(engine, status="queued", name="waiting")
    finishing = add_run(engine, status="queued", name="finishing")
    at = open_app(monkeypatch, database, params={"runs": f"{waiting},{finishing}"})
    # It finishes after the page was drawn, in a way the page's cache key does not notice
    # (no time stamps change), so the button still offers to cancel both.
    with engine.begin() as conn:
        conn.execute(text("UPDATE runs SET status = 'completed' WHERE id = :i"), {"i": finishing})
    (button,) = [b for b in at.button if b.label == "Cancel 2 run(s)"]
    button.click().run()
    status = frames.runs(engine).set_index("id")["status"]
    assert status[waiting] == "cancelled" and status[finishing] == "completed"
    assert [t.value for t in at.toast] == [
        "Cancelled 1 run(s); 1 had already finished or were deleted"
    ]


def test_delete_confirmation_lists_the_runs_and_the_selection_is_named(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database: str
) -> None:
    first = add_run(engine, name="first to go")
    second = add_run(engine, name="second to go")
    add_run(engine, name="stays")
    at = open_app(monkeypatch, database, params={"runs": f"{first},{second}"})
    assert "first to go" in shown_text(at) and "Selected (2)" in shown_text(at)
    (button,) = [b for b in at.button if b.label == "Delete 2 run(s)"]
    button.click().run()
    (listed,) = [df.value for df in at.dataframe if "diagnosis" not in df.value.columns]
    assert sorted(listed["name"]) == ["first to go", "second to go"]
    at.button(key="delete_no").click().run()
    assert len(frames.runs(engine)) == 3  # "Keep them" deletes nothing


def test_rename_notes_and_tags_from_the_runs_page_and_filter_by_tag(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database: str
) -> None:
    run = add_run(engine, name="before")
    add_run(engine, name="other")
    at = open_app(monkeypatch, database, params={"runs": run})
    # A form: set every widget, then submit (an at.run() in between would drop the values).
    (name,) = [t for t in at.text_input if t.label == "Name"]
    name.set_value("after")
    at.text_area[0].set_value("lr too high?\nretry with 1e-4")
    (tags,) = [m for m in at.multiselect if m.label == "Tags" and m.key is None]
    tags.set_value(["keep", "baseline"])
    at.button(key="FormSubmitter:annotate_" + run + "-Save").click().run()
    row = frames.runs(engine).set_index("id").loc[run]
    assert row["name"] == "after" and row["notes"] == "lr too high?\nretry with 1e-4"
    assert row["tags"] == ["baseline", "keep"]
    assert list(runs_table(at).set_index("name").loc["after", "tags"]) == ["baseline", "keep"]
    at.multiselect(key="runs_tags").set_value(["keep"]).run()
    assert list(runs_table(at)["name"]) == ["after"]


def test_selected_runs_hidden_by_a_filter_are_named_not_dropped(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database: str
) -> None:
    shown = add_run(engine, arch="relu", name="visible one")
    hidden = add_run(engine, arch="sigmoid", name="filtered out")
    at = open_app(monkeypatch, database, params={"runs": f"{shown},{hidden}"})
    at.pills(key="runs_arch").select("relu").run()
    assert list(runs_table(at)["name"]) == ["visible one"]
    text = shown_text(at)
    assert "Selected (2, 1 of them outside the current filters)" in text
    assert "filtered out" in text  # named, so Delete cannot surprise anyone
    assert set(at.query_params["runs"].split(",")) == {shown, hidden}
