"""Compare charts what API runs logged (`run.log`): a user's 4-class CNN and a regression MLP, each
with free metrics per step and per epoch: picked by name, train/test pairs in one chart, epoch or
step on the x axis as logged, a log axis, non-finite values counted, and no binary-classifier
words on a custom run's loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from dashboard_helpers import assert_ok, chart_titled, charts, open_app
from task_runs import record_multiclass, record_regression


@pytest.fixture
def api_runs(db_path: Path) -> dict[str, str]:
    return {"multi": record_multiclass(db_path), "reg": record_regression(db_path)}


def test_compare_charts_logged_metrics_by_name(
    monkeypatch: pytest.MonkeyPatch, db_path: Path, api_runs: dict[str, str]
) -> None:
    at = open_app(monkeypatch, db_path, "compare", {"runs": ",".join(api_runs.values())})
    assert_ok(at)
    picker = at.multiselect(key="compare_metrics")
    assert picker.options == ["grad_norm_preclip", "lr", "r2", "test/acc", "loss"]
    (loss,) = chart_titled(at, "loss")
    # Both runs' train/test/val losses in one chart, per step (logged every step).
    assert set(loss.data["name"]) == {"train/loss", "test/loss", "val/loss"}
    assert len(loss.data) == 3 * 4 + 3 * 4 + 3 + 3  # each run's 12 steps; test and val
    assert set(loss.data["run_label"]) == {"four classes", "regression"}
    assert loss.spec["encoding"]["x"]["field"] == "step"
    assert loss.spec["encoding"]["strokeDash"]["field"] == "name"
    (acc,) = chart_titled(at, "test/acc")  # alone: under its own name, one point per epoch
    assert acc.spec["encoding"]["x"]["field"] == "epoch" and list(acc.data["epoch"]) == [1, 2, 3]
    (clip,) = chart_titled(at, "grad_norm_preclip")
    assert "3 non-finite value(s) not drawn" in json.dumps(clip.spec["title"])
    # Picking, and the log axis.
    at.multiselect(key="compare_metrics").set_value(["r2"]).run()
    at.toggle(key="compare_metrics_log").set_value(True).run()
    assert_ok(at)
    shown = [c for c in charts(at) if c.title in ("loss", "r2", "test/acc")]
    assert [c.title for c in shown] == ["r2"]
    assert shown[0].spec["encoding"]["y"]["scale"]["type"] == "log"


def test_a_run_without_free_metrics_shows_no_metrics_section(
    monkeypatch: pytest.MonkeyPatch, seeded_db: Path
) -> None:
    at = open_app(monkeypatch, seeded_db, "compare")
    assert_ok(at)
    assert "Logged metrics" not in [s.value for s in at.subheader]


def test_custom_runs_loss_is_not_called_binary_cross_entropy(
    monkeypatch: pytest.MonkeyPatch, db_path: Path, api_runs: dict[str, str]
) -> None:
    at = open_app(monkeypatch, db_path, "compare", {"runs": ",".join(api_runs.values())})
    (loss,) = chart_titled(at, "Loss")
    spec = json.dumps(loss.spec)
    assert "cross-entropy" not in spec and "loss as logged" in spec
    # The spread: named for what it is, and only for the run that gave a probe batch.
    (spread,) = chart_titled(at, "Prediction spread")
    assert "std of outputs on the probe batch" in json.dumps(spread.spec)
    assert "probability" not in json.dumps(spread.spec)
    assert set(spread.data["run_label"]) == {"four classes"}


def test_a_users_depth_key_is_not_taken_for_the_models_depth() -> None:
    """The user's {"depth": 8} (their blocks) beside the 10 weights recorded: Compare's table
    says "depth (your config)" = 8 and "model layers" = 10, as the Runs table's depth does."""
    from gradscope.vocab.custom import display_config, model_summary

    summary = model_summary([f"l{i}: Linear [2, 2]" for i in range(10)], 1234, "2.13", "cpu")
    shown = display_config({"user": {"depth": 8, "lr": 0.1}, "model": summary})
    assert shown["depth (your config)"] == 8 and "depth" not in shown
    assert shown["lr"] == 0.1
    assert shown["model layers"] == 10 and shown["model parameters"] == 1234
