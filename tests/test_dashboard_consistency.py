"""Issue 11's small things (AppTest): unfinished runs show a dash where a number is missing, never
"None" or "nan"; the sidebar's queue and the Runs table read one state, and the queue's ticker
reruns the whole app when the table is behind (so they cannot drift apart on two clocks); the
uploader's limit text is true; an import's result is said once."""

from __future__ import annotations

import math

import pytest
from dashboard_helpers import add_run, chart_titled, open_app
from sqlalchemy import Engine
from streamlit.testing.v1 import AppTest

from gradscope.dashboard import db_gateway, tables
from gradscope.db import frames
from gradscope.db.engine import make_engine
from gradscope.db.epoch_writes import EpochWriter
from gradscope.db.share.export import export_runs_bytes
from gradscope.db.share.source import MAX_IMPORT_MB
from gradscope.vocab.records import FinalMetrics


def table(at: AppTest):  # noqa: ANN201
    (runs_table,) = [d for d in at.dataframe if "progress" in d.value.columns]
    return runs_table


def test_unfinished_runs_show_a_dash_not_none(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database: str
) -> None:
    running = add_run(engine, status="running", epochs=3, recorded=1, name="training")
    add_run(engine, status="queued", name="waiting")
    at = open_app(monkeypatch, database)
    shown = table(at)
    assert math.isnan(shown.value.loc[shown.value["name"] == "training", "test acc"].iloc[0])
    # The cell's text for a missing value: Streamlit's default is the word "None".
    assert shown.proto.placeholder == tables.MISSING == "—"
    assert [tables.number_text(v) for v in (None, math.nan, 0.5, 3)] == ["—", "—", "0.5", "3"]
    # Compare with more runs than cards: the diagnosis table holds the unfinished ones too.
    others = [add_run(engine, name=f"done {i}") for i in range(3)]
    at = open_app(monkeypatch, database, "compare", {"runs": ",".join([running, *others])})
    (diagnosis,) = [d for d in at.dataframe if "finding" in d.value.columns]
    assert diagnosis.value["test acc"].isna().sum() == 1
    assert diagnosis.proto.placeholder == "—"
    captions = " ".join(c.value for c in at.caption)
    assert "None" not in captions and "nan" not in captions


def test_sidebar_queue_and_runs_table_read_one_state(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database: str
) -> None:
    first = add_run(engine, status="running", epochs=3, recorded=1, name="first")
    second = add_run(engine, status="queued", name="second")
    at = open_app(monkeypatch, database)
    rows = table(at).value.set_index("name")
    assert rows.loc["first", "status"] == "running" and rows.loc["second", "status"] == "queued"
    bars = at.sidebar.progress
    assert [b.proto.text for b in bars] == ["1/3 epochs, running", "0/2 epochs, queued"]
    assert rows.loc["first", "progress"] == pytest.approx(1 / 3)
    assert "Queue: 1 running, 1 queued" in [c.value for c in at.sidebar.caption]
    # The Runs page says which state its table shows; the queue compares it with the database.
    drawn = at.session_state[db_gateway.TABLE_VERSION_KEY]
    assert drawn == frames.data_version(engine)

    # The worker finishes the first run and starts the second: the table is now behind, which is
    # what makes the queue's next tick rerun the app (a timer AppTest cannot fire: run()).
    store = EpochWriter(engine)
    store.finish_run(first, "completed", final=FinalMetrics(test_acc=0.9, pred_std=0.2))
    assert frames.data_version(engine) != drawn
    at.run()
    rows = table(at).value.set_index("name")
    assert rows.loc["first", "status"] == "completed"
    assert [b.proto.text for b in at.sidebar.progress] == ["0/2 epochs, queued"]
    assert at.session_state[db_gateway.TABLE_VERSION_KEY] == frames.data_version(engine)
    assert [t.value for t in at.sidebar.text] == [f"second ({second[:8]})"]

    # Other pages draw no runs table: nothing recorded, so the queue never reruns them.
    at.switch_page("app_pages/sweeps.py").run()
    assert db_gateway.TABLE_VERSION_KEY not in at.session_state


def streamlit_size_text(mb: int, windows: bool) -> str:
    """The uploader's "... per file" size, as Streamlit 1.67's frontend writes it (utils.*.js):
    decimal units outside Windows, up one unit past half of it, no decimals."""
    base = 1024 if windows else 1000
    value, units = float(mb * base**2), ["GB", "MB", "KB", "B"]
    unit = len(units) - 1
    while unit and value > base / 2:
        value, unit = value / base, unit - 1
    return f"{value:.0f}{units[unit]}"


def test_the_uploader_states_its_real_limit(monkeypatch: pytest.MonkeyPatch, db_path) -> None:  # noqa: ANN001
    assert streamlit_size_text(512, windows=False) == "1GB"  # the old limit's text: wrong
    at = open_app(monkeypatch, db_path, "share")
    offered = at.file_uploader(key="share_upload").proto.max_upload_size_mb
    assert offered == db_gateway.MAX_UPLOAD_MB
    for windows in (False, True):
        assert streamlit_size_text(offered, windows) == f"{offered}MB"
    # Whatever the browser checks (500e6 bytes, or 500 MiB on Windows), an import accepts it.
    assert offered * 2**20 <= MAX_IMPORT_MB * 2**20


def test_the_import_result_is_shown_once(
    monkeypatch: pytest.MonkeyPatch,
    seeded_db,
    engine: Engine,
    database: str,  # noqa: ANN001
) -> None:
    seeded = make_engine(str(seeded_db))
    ids = list(frames.runs(seeded)["id"])
    content = export_runs_bytes(seeded, ids)
    seeded.dispose()
    add_run(engine, name="mine")
    at = open_app(monkeypatch, database, "share")
    at.file_uploader(key="share_upload").set_value(("teammate.db", content, "x")).run()
    at.button(key="share_import").click().run()
    shown = [e.value for kind in ("success", "text", "markdown", "caption", "info", "toast")
             for e in at.get(kind)]  # fmt: skip
    assert sum("3 run(s)" in text for text in shown) == 1, shown
    assert sum("already present" in text for text in shown) == 1, shown


def tooltip_fields(spec: object) -> set[str]:
    """Every field named in a tooltip anywhere in a Vega-Lite spec."""
    found: set[str] = set()
    if isinstance(spec, dict):
        for key, value in spec.items():
            if key == "tooltip":
                tips = value if isinstance(value, list) else [value]
                found |= {t["field"] for t in tips if isinstance(t, dict) and "field" in t}
            else:
                found |= tooltip_fields(value)
    elif isinstance(spec, list):
        for item in spec:
            found |= tooltip_fields(item)
    return found


def test_grouped_seeds_say_how_many_seeds_each_line_holds(
    monkeypatch: pytest.MonkeyPatch,
    db_path,  # noqa: ANN001
) -> None:
    engine = make_engine(str(db_path))
    ids = [add_run(engine, seed=i) for i in range(3)]
    ids += [add_run(engine, arch="sigmoid", seed=i, grad_norms=(0.01, 0.1, 1.0)) for i in (0, 1)]
    engine.dispose()
    at = open_app(monkeypatch, db_path, "compare", {"runs": ",".join(ids), "epoch": "1"})
    at.selectbox(key="compare_colour_by").set_value("architecture")
    at.toggle(key="compare_group_seeds").set_value(True).run()
    assert not at.exception
    # Coloured by architecture the legend says "relu"/"sigmoid": the caption names the lines.
    captions = [c.value.replace("\\", "") for c in at.caption]  # Markdown escapes
    (caption,) = [c for c in captions if "line(s) from 5 run(s)" in c]
    assert "3 seeds" in caption and "2 seeds" in caption
    for title in ("Gradient flow", "Loss", "Prediction spread"):
        (chart,) = chart_titled(at, title)
        assert {"run_label", "seeds"} <= tooltip_fields(chart.spec), title
        labels = chart.data.groupby("run_label")["seeds"].max()
        assert sorted(labels.tolist()) == [2, 3]
        assert all(label.endswith(f"· {n} seeds") for label, n in labels.items())
