"""gradscope.db.frames: the dashboard's reads, on real databases (the seeded runs and runs recorded
through
EpochWriter), including NULL -> NaN, blob decoding, and a fixed number of statements per call."""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dashboard_helpers import add_run
from share_helpers import add_nonfinite_run
from sqlalchemy import Engine, event

from gradscope.analysis.diagnosis import badge, diagnose
from gradscope.dashboard import tables
from gradscope.db import frames
from gradscope.db.engine import make_engine
from gradscope.db.epoch_writes import EpochWriter
from gradscope.db.queries import run_document
from gradscope.runner.recording import grid_epochs
from gradscope.vocab.fields import HIST_BINS, HIST_LOG10_MIN

SEED_NAMES = {"seed sigmoid", "seed relu", "seed resnet"}


@pytest.fixture
def seeded(seeded_db: Path) -> Iterator[Engine]:
    engine = make_engine(str(seeded_db))
    yield engine
    engine.dispose()


def labelled(engine: Engine) -> dict[str, str]:
    return frames.run_labels(frames.runs(engine))


class StatementCounter:
    def __init__(self, engine: Engine) -> None:
        self.count = 0
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *_args: object) -> None:
        self.count += 1


def test_runs_frame_lists_every_run_newest_first(seeded: Engine) -> None:
    runs = frames.runs(seeded)
    assert set(runs["name"]) == SEED_NAMES
    assert list(runs["status"]) == ["completed"] * 3
    assert runs["created_at"].is_monotonic_decreasing
    assert str(runs["created_at"].dt.tz) == "UTC"
    assert (runs["epochs_done"] == 4).all() and (runs["epochs_total"] == 4).all()
    assert runs["final_test_acc"].between(0, 1).all()
    assert runs["sweep_id"].isna().all()


def test_null_statistics_read_back_as_nan(engine: Engine) -> None:
    run_id = add_nonfinite_run(engine)
    labels = labelled(engine)
    epochs = frames.epochs(engine, labels)
    layers = frames.layer_stats(engine, labels)
    assert epochs["test_loss"].isna().all()  # NaN was stored as NULL
    assert np.isinf(epochs["train_loss"]).all()  # infinities are kept
    assert layers["grad_std"].isna().all()
    assert np.isposinf(layers.loc[layers["layer"] == 0, "grad_norm"]).all()
    assert layers["grad_std"].dtype == float
    assert frames.runs(engine).set_index("id").loc[run_id, "status"] == "diverged"


def test_epochs_and_layer_stats_match_the_run_document(seeded: Engine) -> None:
    labels = labelled(seeded)
    epochs = frames.epochs(seeded, labels)
    layers = frames.layer_stats(seeded, labels)
    assert len(epochs) == 3 * 4 and len(layers) == 3 * 4 * 7  # depth 6: 7 Linear layers
    assert set(epochs["run_id"]) == set(labels)
    assert set(layers["run_label"]) == set(labels.values())
    for run_id in labels:
        doc = run_document(seeded, run_id)
        mine = layers[layers["run_id"] == run_id]
        expected = pd.DataFrame(doc["layer_stats"]).sort_values(["epoch", "layer"])
        assert np.allclose(mine["grad_norm"], expected["grad_norm"])
        assert np.allclose(
            epochs.loc[epochs["run_id"] == run_id, "test_acc"],
            [e["test_acc"] for e in doc["epochs"]],
        )


def test_histograms_decode_every_gradient_entry(seeded: Engine) -> None:
    labels = labelled(seeded)
    hist = frames.histograms(seeded, labels, epoch=2, layer=1)
    assert len(hist) == 3 * HIST_BINS
    assert hist["bin_left"].min() == HIST_LOG10_MIN
    assert np.allclose(hist["bin_right"] - hist["bin_left"], 0.25)
    per_run = hist.groupby("run_id")
    # Layer 1 is 16 x 16 weights: every entry lands in a bin, or is zero or non-finite.
    assert (per_run["count"].sum() == (1 - per_run["zero_fraction"].first()) * 256).all()
    total = per_run["fraction"].sum() + per_run["zero_fraction"].first()
    assert np.allclose(total + per_run["nonfinite_fraction"].first(), 1.0)
    assert frames.histograms(seeded, labels, epoch=99, layer=1).empty


def test_decision_maps_decode_grid_and_points(seeded: Engine) -> None:
    labels = labelled(seeded)
    maps = frames.decision_maps(seeded, labels, epoch=3)
    assert set(maps.grid["run_id"]) == set(labels)
    # A 4-epoch run keeps grids at epochs 1, 2 and 4: asking for epoch 3 shows the latest
    # grid at or before it.
    assert grid_epochs(4) == {1, 2, 4}
    assert set(maps.grid["epoch"]) == {2}
    assert (maps.grid.groupby("run_id").size() == 48 * 48).all()
    assert maps.grid["prob"].between(0, 1).all()
    assert (maps.points.groupby("run_id").size() == 128).all()  # 25% of 512 samples
    assert set(maps.points["label"]) == {0, 1}
    assert np.isfinite(maps.points[["x", "y"]].to_numpy()).all()


def test_run_ends_hold_first_and_last_epochs_only(seeded: Engine) -> None:
    ends = frames.run_ends(seeded)
    assert set(ends.layers["epoch"]) == {1, 4}
    assert len(ends.layers) == 3 * 2 * 7
    assert len(ends.epochs) == 3 and set(ends.epochs["epoch"]) == {4}


def test_badges_agree_with_the_full_diagnosis(engine: Engine, seeded: Engine) -> None:
    """The runs table's vectorised badge equals badge(diagnose()) run by run."""
    add_nonfinite_run(engine)
    add_run(engine, grad_norms=(1e-6, 1e-3, 1.0), name="vanishing")
    add_run(engine, grad_norms=(5e4, 1.0, 1.0), name="exploding")
    add_run(engine, grad_norms=(0.1, 0.2, 0.3), pred_std=1e-5, test_acc=0.5, name="collapsed")
    add_run(engine, grad_norms=(0.1, 0.2, 0.3), name="healthy")
    add_run(engine, status="queued", name="waiting")
    for db in (engine, seeded):
        runs = frames.runs(db)
        ends = frames.run_ends(db)
        fast = tables.badges(runs, ends.layers, ends.epochs)
        labels = frames.run_labels(runs)
        epochs, layers = frames.epochs(db, labels), frames.layer_stats(db, labels)
        for run in runs.itertuples():
            found = diagnose(
                epochs[epochs["run_id"] == run.id],
                layers[layers["run_id"] == run.id],
                arch=run.arch,
                status=run.status,
                depth=run.depth,
            )
            assert fast[run.id] == badge(found), run.name
    runs, ends = frames.runs(engine), frames.run_ends(engine)
    found = tables.badges(runs, ends.layers, ends.epochs)
    named = dict(zip(runs["name"], found[runs["id"]], strict=True))
    assert named == {
        "nonfinite": "diverged",
        "vanishing": "vanishing",
        "exploding": "exploding",
        "collapsed": "collapsed",
        "healthy": "healthy",
        "waiting": "empty",
    }


def test_sweep_summary_one_row_per_run(engine: Engine) -> None:
    sweep = (str(uuid.uuid4()), "depths")
    add_run(engine, depth=2, grad_norms=(1e-4, 1e-2, 1.0), sweep=sweep, test_acc=0.5)
    add_run(engine, depth=2, grad_norms=(0.0, 1e-2, 1.0), sweep=sweep, seed=1, test_acc=0.5)
    add_run(engine, arch="resnet", depth=1, grad_norms=(0.5, 1.0), sweep=sweep, test_acc=0.97)
    add_run(engine, depth=1, grad_norms=(0.5, 1.0), status="queued", sweep=sweep)
    add_run(engine, depth=1, grad_norms=(0.5, 1.0))  # not in the sweep
    summary = frames.sweep_summary(engine, sweep[0]).sort_values(["arch", "depth", "seed"])
    assert list(summary.columns) == [
        "run_id",
        "arch",
        "depth",
        "seed",
        "grad_ratio_log10",
        "final_test_acc",
    ]
    assert len(summary) == 4
    ratios = summary["grad_ratio_log10"].tolist()
    assert math.isnan(ratios[0])  # relu d1, still queued: nothing recorded
    assert ratios[1] == pytest.approx(-4.0)  # relu d2 s0: 1e-4 / 1
    assert ratios[2] == -math.inf  # relu d2 s1: the first layer's gradient underflowed to 0
    assert ratios[3] == pytest.approx(math.log10(0.5))  # resnet d1
    assert summary["final_test_acc"].tolist()[3] == pytest.approx(0.97)


def test_queue_and_data_version_follow_changes(engine: Engine) -> None:
    before = frames.data_version(engine)
    queued = add_run(engine, status="queued")
    after_queue = frames.data_version(engine)
    running = add_run(engine, status="running", epochs=3)
    queue = frames.queue(engine)
    assert list(queue["id"]) == [running, queued]  # running first
    assert list(queue["status"]) == ["running", "queued"]
    assert len({before, after_queue, frames.data_version(engine)}) == 3
    version = frames.data_version(engine)
    EpochWriter(engine).delete_runs([queued])
    assert frames.data_version(engine) != version
    assert list(frames.queue(engine)["id"]) == [running]


def test_reads_do_not_loop_over_runs(engine: Engine) -> None:
    """The number of statements per call does not grow with the number of runs."""
    counts = []
    for _ in range(2):
        for _ in range(3):
            add_run(engine, grad_norms=(0.1, 0.2, 0.3))
        labels = labelled(engine)
        counter = StatementCounter(engine)
        frames.runs(engine)
        frames.run_ends(engine)
        frames.epochs(engine, labels)
        frames.layer_stats(engine, labels)
        frames.histograms(engine, labels, 1, 0)
        frames.decision_maps(engine, labels, 1)
        counts.append(counter.count)
    # run_ends: end layers, end epochs, the warnings' summary and the custom runs' facts.
    assert counts[0] == counts[1] <= 12


def test_selected_runs_keep_the_order_given(seeded: Engine) -> None:
    ids = list(frames.runs(seeded)["id"])[::-1]
    chosen = frames.selected_runs(seeded, [ids[0], "not-a-run", ids[2]])
    assert list(chosen["id"]) == [ids[0], ids[2]]
    assert chosen["config"].map(lambda c: c["depth"]).tolist() == [6, 6]


def test_labels_are_unique_and_readable() -> None:
    runs = pd.DataFrame(
        {
            "id": ["abcd1111-x", "abcd2222-y", "ffff0000-z"],
            "name": ["same", "same", None],
            "arch": ["relu", "relu", "sigmoid"],
            "depth": [2, 2, 10],
            "seed": [0, 0, 3],
        }
    )
    labels = frames.run_labels(runs)
    assert labels["ffff0000-z"] == "sigmoid d10 s3 · ffff0000"
    assert labels["abcd1111-x"] == "same · abcd1111"  # 4 characters would collide
    assert len(set(labels.values())) == 3


@pytest.mark.postgres
def test_frames_on_postgresql(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        add_nonfinite_run(engine)
        run_id = add_run(engine, grad_norms=(1e-6, 1e-3, 1.0), name="pg")
        labels = labelled(engine)
        layers = frames.layer_stats(engine, labels)
        assert layers["grad_std"].isna().sum() > 0  # NaN -> NULL -> NaN on PostgreSQL too
        ends = frames.run_ends(engine)
        badges = tables.badges(frames.runs(engine), ends.layers, ends.epochs)
        assert badges[run_id] == "vanishing"
        assert len(frames.histograms(engine, labels, 1, 1)) == 2 * HIST_BINS
        assert frames.data_version(engine)[0] == "2"
    finally:
        engine.dispose()
