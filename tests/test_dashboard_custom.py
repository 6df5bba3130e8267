"""A run recorded with the gradscope API (a user's CNN) beside built-in runs in the dashboard:
Runs lists it, Compare draws it in every chart that applies, with a diagnosis that fits."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from dashboard_helpers import assert_ok, chart_titled, charts, open_app
from torch import nn

import gradscope
from gradscope.analysis.diagnosis import badge, diagnose
from gradscope.dashboard.tables import badges
from gradscope.db import frames
from gradscope.db.engine import make_engine


def record_custom_run(db: Path) -> str:
    """A small CNN trained three epochs with the API, probe batch included."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 8),
        nn.Sigmoid(),
        nn.Linear(8, 3),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(32, 1, 6, 6), torch.randint(0, 3, (32,))
    with gradscope.init(db=str(db), name="my cnn", config={"lr": 0.1, "note": "<b>x</b>"}) as run:
        run.watch(model, optimizer, probe=x[:16])
        for _ in range(3):
            for i in range(0, 32, 8):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(x[i : i + 8]), y[i : i + 8])
                loss.backward()
                optimizer.step()
            run.log_epoch(train_loss=loss.detach(), train_acc=0.4, test_acc=0.3)
    return run.id


@pytest.fixture
def mixed_ids(seeded_db: Path) -> dict[str, str]:
    custom = record_custom_run(seeded_db)
    engine = make_engine(str(seeded_db))
    runs = frames.runs(engine)
    engine.dispose()
    ids = dict(zip(runs["name"], runs["id"], strict=True))
    assert ids["my cnn"] == custom
    return ids


def test_compare_draws_a_custom_run_beside_built_in_runs(
    monkeypatch: pytest.MonkeyPatch, seeded_db: Path, mixed_ids: dict[str, str]
) -> None:
    ids = ",".join(mixed_ids.values())
    at = open_app(monkeypatch, seeded_db, "compare", {"runs": ids, "epoch": "3"})
    assert_ok(at)
    (flow,) = chart_titled(at, "Gradient flow")
    labels = set(flow.data["run_label"])
    assert any(label.startswith("my cnn") for label in labels) and len(labels) == 4
    custom = flow.data[flow.data["run_label"].str.startswith("my cnn")]
    assert len(custom) == 3  # its three weights, at the epoch shown
    (hist,) = chart_titled(at, "Gradient magnitudes")
    assert any(label.startswith("my cnn") for label in set(hist.data["run_label"]))
    heat = [c for c in charts(at) if c.title.startswith("my cnn")]
    assert heat, [c.title for c in charts(at)]
    # The config table: the user's keys and the model summary beside the RunConfig fields.
    (table,) = [d.value for d in at.dataframe if "note" in d.value.columns]
    row = table.loc[[i for i in table.index if i.startswith("my cnn")][0]]
    assert row["note"] == "<b>x</b>" and row["model layers"] == "3"
    # Its own row of the diagnosis (four runs: one row per run, not a card each).
    (diagnosis,) = [d.value for d in at.dataframe if "summary" in d.value.columns]
    mine = diagnosis[diagnosis["run"].str.startswith("my cnn")]
    assert list(mine["summary"]) == ["Healthy"]


def test_diagnosis_of_a_custom_run_gives_cures_that_fit_a_custom_model() -> None:
    """Vanishing gradients and a constant output in a user's model: the cures say what to
    change in their code, and optional losses never given do not read as divergence."""
    layers = pd.DataFrame(
        {
            "epoch": [1, 1, 1],
            "layer": [0, 1, 2],
            "grad_norm": [1e-9, 1e-5, 1.0],
            "grad_max_abs": [1e-9, 1e-5, 1.0],
            "saturated_frac": [0.9, math.nan, math.nan],
            "dead_frac": [math.nan, math.nan, math.nan],
            "act_std": [1e-1, 1e-3, 1e-5],
        }
    )
    nan = math.nan
    epochs = pd.DataFrame(
        {
            "epoch": [1],
            "train_loss": [0.7],
            "test_loss": [nan],
            "train_acc": [nan],
            "test_acc": [nan],
            "pred_std": [1e-6],
        }
    )
    found = diagnose(epochs, layers, arch="custom", status="completed", depth=3)
    kinds = {f.kind for f in found}
    assert {"vanishing", "collapsed", "saturated"} <= kinds and "diverged" not in kinds
    cures = [c for f in found for c in f.cures]
    assert cures and not any("arch " in c for c in cures)
    assert any("normalisation" in c for c in cures)
    runs = pd.DataFrame({"id": ["r"], "status": ["completed"], "arch": ["custom"]})
    ends = epochs.assign(run_id="r").iloc[:, ::-1]
    assert badges(runs, layers.assign(run_id="r"), ends)["r"] == badge(found)
    diverged = diagnose(epochs, layers, arch="custom", status="diverged", depth=3)
    assert diverged[0].kind == "diverged" and "not stopped" in diverged[0].detail


def test_runs_page_lists_a_custom_run(
    monkeypatch: pytest.MonkeyPatch, seeded_db: Path, mixed_ids: dict[str, str]
) -> None:
    at = open_app(monkeypatch, seeded_db)
    (table,) = [d.value for d in at.dataframe if "diagnosis" in d.value.columns]
    row = table.set_index("name").loc["my cnn"]
    assert (row["arch"], row["depth"], row["status"]) == ("custom", 3, "completed")
    assert row["progress"] == 1.0 and list(row["diagnosis"]) == ["healthy"]
