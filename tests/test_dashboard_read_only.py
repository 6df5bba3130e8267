"""A read-only dashboard (reachable from other machines, started without --allow-writes) draws
no control that writes, and every write function of its gateway refuses in one plain line and
changes nothing in the database (issue 24, item 8)."""

from __future__ import annotations

import os
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from dashboard_helpers import add_run, open_app, shown_text
from sqlalchemy import Engine
from streamlit.testing.v1 import AppTest

from gradscope.dashboard import db_gateway
from gradscope.db import annotate
from gradscope.db.engine import make_engine
from gradscope.db.errors import StorageError
from gradscope.db.share.export import export_runs_bytes
from gradscope.vocab.protocol import access_env

PAGES = ("runs", "compare", "sweeps", "share")
# The controls a read-only visitor may use: none of them writes.
READ_BUTTONS = ("Compare",)


def _exposed(monkeypatch: pytest.MonkeyPatch, *, allow_writes: bool) -> None:
    env = access_env(exposed=True, allow_writes=allow_writes, data_dir=None)
    for key, value in env.items():
        monkeypatch.setenv(key, value)


def _seed(db: Path) -> dict[str, str]:
    engine = make_engine(str(db))
    sweep = (str(uuid.uuid4()), "depth sweep")
    ids = {
        "done": add_run(engine, name="kept name", sweep=sweep, depth=2),
        "deep": add_run(engine, arch="sigmoid", depth=3, grad_norms=(1, 2, 3, 4), sweep=sweep),
        "queued": add_run(engine, status="queued", name="waiting"),
    }
    annotate.set_notes(engine, ids["done"], "kept notes")
    annotate.set_tags(engine, ids["done"], add=["kept-tag"])
    engine.dispose()
    return ids


def _dump(db: Path) -> list[str]:
    """Every row of every table, as SQL: equal before and after means nothing was written."""
    with sqlite3.connect(db) as conn:
        return list(conn.iterdump())


def _open(monkeypatch: pytest.MonkeyPatch, db: Path | str, page: str, run_id: str) -> AppTest:
    # One run chosen: the Runs page would offer its editor, Compare its "Names, notes and tags".
    return open_app(monkeypatch, db, None if page == "runs" else page, {"runs": run_id})


def _write_controls(at: AppTest) -> list[str]:
    """Every control on the page (main area and sidebar) that could write."""
    found = [f"button {b.label!r}" for b in at.button if not b.label.startswith(READ_BUTTONS)]
    found += [f"form button {b.label!r}" for b in at.form_submit_button]
    found += [f"text area {t.label!r}" for t in at.text_area]
    found += [f"{el.type}" for el in at.get("file_uploader")]
    # Whatever sits in a form is there to be submitted: the New run and New sweep forms, the
    # run editor.
    for kind in ("text_input", "text_area", "multiselect", "selectbox", "number_input", "pills"):
        found += [f"{kind} {el.label!r} in a form" for el in at.get(kind) if el.proto.form_id]
    return found


@pytest.mark.parametrize("page", PAGES)
def test_a_read_only_dashboard_draws_no_control_that_writes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, page: str
) -> None:
    db = tmp_path / "runs.db"
    ids = _seed(db)
    _exposed(monkeypatch, allow_writes=True)
    writable = _open(monkeypatch, db, page, ids["done"])
    # The same page, writable, has them: the check below can see them.
    assert _write_controls(writable) or page == "sweeps"
    assert any(b.key and b.key.startswith("cancel_") for b in writable.sidebar.button)

    _exposed(monkeypatch, allow_writes=False)
    before = _dump(db)
    at = _open(monkeypatch, db, page, ids["done"])
    assert _write_controls(at) == []
    assert not at.sidebar.button  # the live queue lists the queued run without a cancel button
    assert "waiting" in " ".join(t.value for t in at.sidebar.text)
    assert "Read-only" in " ".join(c.value for c in at.sidebar.caption)
    if page in ("runs", "compare"):  # the chosen run's name, notes and tags, as plain text
        text = shown_text(at)
        assert "kept notes" in text and "kept-tag" in text
    assert _dump(db) == before


def test_a_read_only_dashboard_with_no_runs_offers_no_button_that_queues(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    db = tmp_path / "runs.db"
    make_engine(str(db)).dispose()
    _exposed(monkeypatch, allow_writes=False)
    at = open_app(monkeypatch, db)
    assert _write_controls(at) == []
    assert "read-only" in shown_text(at)


def _writes(ids: dict[str, str], upload: bytes) -> dict[str, Callable[[], object]]:
    """Each write the gateway offers, called as a page would."""
    return {
        "queue_run": lambda: db_gateway.queue_run({"depth": 2}),
        "queue_sweep": lambda: db_gateway.queue_sweep({"arch": "relu,sigmoid", "depth": "2"}),
        "queue_classic_comparison": db_gateway.queue_classic_comparison,
        "queue_cures": lambda: db_gateway.queue_cures({"id": ids.get("deep", "")}, []),
        "cancel_runs": lambda: db_gateway.cancel_runs([ids["queued"]]),
        "delete_runs": lambda: db_gateway.delete_runs(list(ids.values())),
        "annotate_run": lambda: db_gateway.annotate_run(
            ids["done"], name="vandal", notes=None, tags=["x"]
        ),
        "import_db_bytes": lambda: db_gateway.import_db_bytes(upload, "their.db"),
        "import_db_bytes dry run": lambda: db_gateway.import_db_bytes(upload, "their.db", True),
    }


WRITES = list(_writes({}, b""))


@pytest.mark.parametrize("write", WRITES)
def test_every_gateway_write_is_refused_on_a_read_only_dashboard(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, write: str
) -> None:
    db = tmp_path / "runs.db"
    ids = _seed(db)
    other = make_engine(str(tmp_path / "theirs.db"))
    upload = export_runs_bytes(other, [add_run(other, name="theirs")])
    other.dispose()
    _exposed(monkeypatch, allow_writes=False)
    open_app(monkeypatch, db)  # the dashboard has opened its database
    before = _dump(db)
    with pytest.raises(db_gateway.WriteRefused) as refused:
        _writes(ids, upload)[write]()
    message = str(refused.value)
    assert "read-only" in message and "nothing was written" in message
    assert "\n" not in message and "Traceback" not in message
    assert _dump(db) == before


def test_the_read_only_engine_refuses_a_write_that_skips_the_guard(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Defence in depth: the read-only dashboard's engine is opened read-only."""
    from gradscope.db.lifecycle import delete_runs

    db = tmp_path / "runs.db"
    ids = _seed(db)
    _exposed(monkeypatch, allow_writes=False)
    open_app(monkeypatch, db)
    before = _dump(db)
    with pytest.raises(StorageError, match="read-only"):
        delete_runs(db_gateway.engine(), list(ids.values()))
    assert _dump(db) == before


def test_editing_a_replaced_file_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The editor's write passes the same guard as every other: a file replaced after the
    dashboard opened it is not written (the edit would land where nobody reads it)."""
    db = tmp_path / "runs.db"
    ids = _seed(db)
    at = open_app(monkeypatch, db)
    assert at.button  # writable: the page has its controls
    replacement = tmp_path / "other.db"
    make_engine(str(replacement)).dispose()
    os.replace(replacement, db)
    before = _dump(db)
    with pytest.raises(db_gateway.WriteRefused, match="replaced"):
        db_gateway.annotate_run(ids["done"], name="lost", notes="lost", tags=[])
    assert _dump(db) == before  # the file now at the path is untouched too


def test_a_refused_cancel_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    db = tmp_path / "runs.db"
    ids = _seed(db)
    at = open_app(monkeypatch, db)
    moved = tmp_path / "moved.db"
    os.replace(db, moved)  # deleted from under the dashboard: writes are refused
    at.sidebar.button(key=f"cancel_{ids['queued']}").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert errors and all("\n" not in e for e in errors), errors
    assert any("Nothing was written" in e for e in errors), errors
    assert not any("could not be read" in e for e in errors), errors


def test_a_refused_edit_shows_one_line_under_the_form(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    db = tmp_path / "runs.db"
    ids = _seed(db)
    at = open_app(monkeypatch, db, params={"runs": ids["done"]})
    os.replace(db, tmp_path / "moved.db")
    (name,) = [t for t in at.text_input if t.label == "Name"]
    name.set_value("renamed")
    (save,) = [b for b in at.form_submit_button if b.label == "Save"]
    save.click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any("Nothing was written" in e for e in errors), errors
    assert not any("could not be read" in e for e in errors), errors
    assert "renamed" not in "".join(_dump(tmp_path / "moved.db"))


def test_read_only_on_either_backend_shows_the_runs_and_refuses_writes(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database: str
) -> None:
    """The read-only dashboard opens its database read-only: on PostgreSQL too, every page
    still reads, and the writes are refused with the database as it was."""
    from gradscope.db import frames

    run_id = add_run(engine, name="kept name")
    queued = add_run(engine, status="queued")
    annotate.set_notes(engine, run_id, "kept notes")

    def snapshot() -> list[tuple]:
        runs = frames.runs(engine)
        return sorted(zip(runs["id"], runs["name"], runs["notes"], runs["status"], strict=True))

    before = snapshot()
    _exposed(monkeypatch, allow_writes=False)
    for page in PAGES:
        at = _open(monkeypatch, database, page, run_id)
        assert _write_controls(at) == []
    for write in (
        lambda: db_gateway.annotate_run(run_id, name="x", notes=None, tags=[]),
        lambda: db_gateway.cancel_runs([queued]),
        lambda: db_gateway.delete_runs([run_id, queued]),
        lambda: db_gateway.queue_run({"depth": 2}),
    ):
        with pytest.raises(db_gateway.WriteRefused):
            write()
    assert snapshot() == before
