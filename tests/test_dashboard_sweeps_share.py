"""The Sweeps and Share pages (AppTest on real databases)."""

from __future__ import annotations

import math
import uuid
from pathlib import Path

import pytest
from dashboard_helpers import add_run, chart_titled, open_app, shown_text, shows_literally
from sqlalchemy import Engine

from gradscope.cli.dashboard_commands import streamlit_command
from gradscope.db import frames
from gradscope.db.engine import make_engine
from gradscope.db.share.export import export_runs_bytes


def test_sweeps_page_plots_ratio_and_accuracy_against_depth(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database: str
) -> None:
    sweep = (str(uuid.uuid4()), "my sweep")
    for seed, spread in enumerate((1.0, 3.0)):
        add_run(
            engine,
            arch="sigmoid",
            depth=1,
            grad_norms=(1e-2 * spread, 1.0),
            seed=seed,
            sweep=sweep,
            test_acc=0.8,
        )
        add_run(
            engine,
            arch="sigmoid",
            depth=2,
            grad_norms=(1e-5 * spread, 1e-2, 1.0),
            seed=seed,
            sweep=sweep,
            test_acc=0.5,
        )
        add_run(
            engine,
            arch="resnet",
            depth=2,
            grad_norms=(0.5 * spread, 1.0, 1.0),
            seed=seed,
            sweep=sweep,
            test_acc=0.95,
        )
    add_run(engine, name="not in a sweep")
    at = open_app(monkeypatch, database, "sweeps")
    assert "6 of 6 runs finished" in shown_text(at)
    (ratio,) = chart_titled(at, "Gradient ratio vs depth")
    (acc,) = chart_titled(at, "Test accuracy vs depth")
    assert len(ratio.data) == len(acc.data) == 6
    deep_sigmoid = ratio.data[(ratio.data["arch"] == "sigmoid") & (ratio.data["depth"] == 2)]
    assert sorted(deep_sigmoid["grad_ratio_log10"]) == pytest.approx([-5.0, math.log10(3e-5)])
    layers = ratio.spec["layer"]
    assert any(layer["encoding"]["y"].get("aggregate") == "median" for layer in layers)
    assert set(acc.data["final_test_acc"]) == {0.8, 0.5, 0.95}
    assert at.query_params["sweep"] == sweep[0]


def test_sweeps_page_puts_any_swept_setting_on_the_x_axis(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database: str
) -> None:
    from gradscope.dashboard.colors import ARCH_COLORS

    sweep = (str(uuid.uuid4()), "lr sweep")
    for lr in (1e-4, 1e-3, 1e-1):
        for arch in ("relu", "sigmoid"):
            for seed in (0, 1):
                add_run(engine, arch=arch, sweep=sweep, seed=seed, settings={"lr": lr})
    at = open_app(monkeypatch, database, "sweeps")
    assert at.selectbox(key="sweep_x").options == ["arch", "lr"]  # what was swept, not seed
    at.selectbox(key="sweep_x").set_value("lr").run()
    (ratio,) = chart_titled(at, "Gradient ratio vs lr")
    line = ratio.spec["layer"][1]
    assert line["encoding"]["x"]["field"] == "lr"
    assert line["encoding"]["x"]["scale"]["type"] == "log"  # lr spans three decades
    scale = line["encoding"]["color"]["scale"]
    assert dict(zip(scale["domain"], scale["range"], strict=True)) == {
        a: ARCH_COLORS[a] for a in ("relu", "sigmoid")
    }
    assert len(ratio.data) == 12
    assert "depth = 2" in shown_text(at) and "Fixed settings" in shown_text(at)


def test_sweeps_page_without_sweeps_says_how_to_make_one(
    monkeypatch: pytest.MonkeyPatch, seeded_db: Path
) -> None:
    at = open_app(monkeypatch, seeded_db, "sweeps")
    assert "No sweeps yet" in shown_text(at)
    assert "gradscope sweep" in shown_text(at)


def test_share_page_offers_downloads_of_the_chosen_runs(
    monkeypatch: pytest.MonkeyPatch, seeded_db: Path
) -> None:
    seeded = make_engine(str(seeded_db))
    one = frames.runs(seeded)["id"].iloc[0]
    seeded.dispose()
    at = open_app(monkeypatch, seeded_db, "share", {"runs": one})
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Database file (.db) of 1 run(s)", "CSV tables (.zip) of 1 run(s)"]
    at.radio(key="share_scope").set_value("all").run()
    labels = [b.label for b in at.get("download_button")]
    assert labels == ["Database file (.db) of 3 run(s)", "CSV tables (.zip) of 3 run(s)"]


def test_share_page_imports_an_uploaded_database(
    monkeypatch: pytest.MonkeyPatch, seeded_db: Path, engine: Engine, database: str
) -> None:
    seeded = make_engine(str(seeded_db))
    content = export_runs_bytes(seeded, list(frames.runs(seeded)["id"]))
    seeded.dispose()
    at = open_app(monkeypatch, database, "share")
    at.file_uploader(key="share_upload").set_value(
        ("teammate.db", content, "application/octet-stream")
    ).run()
    at.button(key="share_import").click().run()
    assert "Added 3 run(s)" in at.success[0].value
    assert set(frames.runs(engine)["name"]) == {"seed sigmoid", "seed relu", "seed resnet"}

    at.file_uploader(key="share_upload").set_value(
        ("notes.db", b"not a database" * 100, "text/plain")
    ).run()
    at.button(key="share_import").click().run()
    assert "Nothing was imported" in at.error[0].value
    assert len(frames.runs(engine)) == 3


def test_sweep_names_are_shown_as_typed_in_the_choice_of_runs(
    monkeypatch: pytest.MonkeyPatch, engine: Engine, database: str
) -> None:
    sweep = (str(uuid.uuid4()), "*bold* [x](http://example.com)")
    add_run(engine, sweep=sweep)
    at = open_app(monkeypatch, database, "share")
    # Radio labels are Markdown: the sweep's option must read as the name was typed.
    assert any(
        shows_literally(option, f"Sweep: {sweep[1]}")
        for option in at.radio(key="share_scope").options
    )
    at.radio(key="share_scope").set_value(f"sweep:{sweep[0]}").run()
    labels = [b.label for b in at.get("download_button")]
    assert labels[0] == "Database file (.db) of 1 run(s)"


def test_the_server_accepts_uploads_as_large_as_the_uploader_offers(
    monkeypatch: pytest.MonkeyPatch, db_path: Path
) -> None:
    at = open_app(monkeypatch, db_path, "share")
    offered = at.file_uploader(key="share_upload").proto.max_upload_size_mb
    command = streamlit_command("127.0.0.1", 8501)
    pairs = dict(zip(command[5::2], command[6::2], strict=True))
    # Streamlit's server refuses bodies over server.maxUploadSize (default 200 MB) whatever
    # the widget says: both must allow the same size.
    assert pairs["--server.maxUploadSize"] == str(offered)
    assert offered * 2**20 >= 500 * 10**6
