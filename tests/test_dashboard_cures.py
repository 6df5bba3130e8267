"""Test the cures in the dashboard (AppTest): the button under a run's diagnosis in Compare and in
the Runs page's single-run actions queues the trial through the gateway's write guard (hidden on
a read-only dashboard); the card shows the trial's progress, then the verdict, as
`gradscope show` gives it; the classic comparison offers it for its sigmoid run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from dashboard_helpers import add_run, open_app, shown_text
from streamlit.testing.v1 import AppTest
from typer.testing import CliRunner

from gradscope.analysis.cures import CONTROL
from gradscope.cli.main import app
from gradscope.dashboard import db_gateway
from gradscope.db import frames
from gradscope.db.engine import make_engine
from gradscope.db.trials import trial_frames
from gradscope.vocab.protocol import access_env

BUTTON = "Test the cures"


def plain(text: str) -> str:
    """Markdown source as read: escapes dropped, whitespace collapsed."""
    return " ".join(re.sub(r"\\(.)", r"\1", text).split())


def sick_run(db: Path, **values: object) -> str:
    """A finished sigmoid run whose gradient vanishes and output collapsed (recorded numbers)."""
    engine = make_engine(str(db))
    run_id = add_run(
        engine,
        arch="sigmoid",
        depth=3,
        grad_norms=(1e-9, 1e-6, 1e-3, 1.0),
        test_acc=0.5,
        pred_std=1e-6,
        **values,  # type: ignore[arg-type]
    )
    engine.dispose()
    return run_id


def buttons(at: AppTest) -> dict[str, object]:
    return {b.label: b for b in at.button}


def test_runs_page_single_run_action_queues_the_cure_trial(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    db = tmp_path / "runs.db"
    patient = sick_run(db, name="sick")
    at = open_app(monkeypatch, db, params={"runs": patient})
    buttons(at)[BUTTON].click().run()  # type: ignore[attr-defined]
    engine = make_engine(str(db))
    trial = trial_frames(engine, patient)
    assert trial is not None and "sick" in trial.sweep_name
    assert set(trial.runs["cure"]) >= {CONTROL, "relu", "resnet"}
    assert set(trial.runs["status"]) == {"queued"}
    # The page now says how far the trial is instead of offering the button again.
    assert BUTTON not in buttons(at)
    assert f"0/{len(trial.runs)} runs finished" in plain(shown_text(at) + progress_text(at))


def progress_text(at: AppTest) -> str:
    return " ".join(p.proto.text for p in at.get("progress"))


def test_read_only_dashboard_shows_no_cure_button(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    db = tmp_path / "runs.db"
    patient = sick_run(db)
    for key, value in access_env(exposed=True, allow_writes=False, data_dir=None).items():
        monkeypatch.setenv(key, value)
    for page in (None, "compare"):
        at = open_app(monkeypatch, db, page, {"runs": patient})
        assert BUTTON not in buttons(at) and "Test the cures on the sigmoid run" not in buttons(at)


def test_custom_runs_say_their_cures_need_code(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import gradscope

    db = tmp_path / "runs.db"
    run = gradscope.init(db=str(db), config={"lr": 0.1}, quiet=True)
    run.log_epoch(train_loss=float("nan"))  # a non-finite loss: diverged, with its cures
    assert run.finish() == "diverged"
    at = open_app(monkeypatch, db, None, {"runs": run.id})  # its single-run actions
    assert BUTTON not in buttons(at)
    assert "changes to its code" in plain(shown_text(at))


@pytest.mark.slow
def test_compare_button_trains_to_a_verdict_that_matches_the_cli(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from gradscope.runner.worker import WorkerOptions, run_worker

    db = tmp_path / "runs.db"
    small = ["--samples", "512", "--depth", "5", "--width", "16", "--epochs", "4"]
    made = CliRunner().invoke(
        app, ["train", "--db", str(db), "--arch", "sigmoid", *small, "--device", "cpu", "--json"]
    )
    patient = json.loads(made.stdout)["id"]
    at = open_app(monkeypatch, db, "compare", {"runs": patient})
    buttons(at)[BUTTON].click().run()  # type: ignore[attr-defined]
    queued = len(frames.runs(make_engine(str(db)))) - 1
    assert queued >= 6  # at least one cure and the control, three seeds each
    assert f"0/{queued} runs finished" in plain(progress_text(at))
    assert run_worker(WorkerOptions(db=str(db), exit_when_idle=True, poll_s=0.05)) == queued
    db_gateway._cure_trial.clear()
    at.run()
    shown = plain(shown_text(at))
    cli = CliRunner().invoke(app, ["show", patient, "--db", str(db), "--json"])
    verdicts = {
        v["text"] for f in json.loads(cli.stdout)["diagnosis"] for v in f["trial"]["verdicts"]
    }
    assert verdicts and all(text in shown for text in verdicts)
    assert f"{queued} runs finished, measured on seeds 0, 1, 2" in shown


def test_classic_comparison_offers_the_cures_on_its_sigmoid_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    db = tmp_path / "runs.db"
    engine = make_engine(str(db))
    at = open_app(monkeypatch, db)
    buttons(at)["Run the classic comparison"].click().run()  # type: ignore[attr-defined]
    # Still queued: the offer waits for the comparison to finish.
    assert "When the classic comparison has finished" in plain(shown_text(at))
    assert "Test the cures on the sigmoid run" not in buttons(at)
    # Finished (recorded numbers stand in for training): the offer is a button.
    runs = frames.runs(engine)
    sweep = (runs["sweep_id"].iloc[0], db_gateway.CLASSIC_SWEEP_NAME)
    engine.dispose()
    sigmoid = sick_run(db, sweep=sweep)
    at.run()
    buttons(at)["Test the cures on the sigmoid run"].click().run()  # type: ignore[attr-defined]
    trial = trial_frames(make_engine(str(db)), sigmoid)
    assert trial is not None and "relu" in set(trial.runs["cure"])
    assert "runs finished" in plain(progress_text(at))
