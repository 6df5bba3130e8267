"""Training: the phenomenon itself, determinism, divergence, and the recorded shape of a run."""

from __future__ import annotations

import math

import pytest
from reference_loop import train
from test_gradient_stats import ListRecorder

from gradscope.db.engine import make_engine
from gradscope.db.queries import run_document
from gradscope.runner.foreground import train_foreground
from gradscope.vocab.config import make_config

# Issue 2's setting: moons, depth 10, width 32, batch 64, SGD lr 0.1, one epoch.
PHENOMENON = {
    "depth": 10,
    "width": 32,
    "batch_size": 64,
    "optimizer": "sgd",
    "lr": 0.1,
    "epochs": 1,
}


def first_to_output_ratio(arch: str, seed: int) -> float:
    rec = ListRecorder()
    train(make_config({**PHENOMENON, "arch": arch, "seed": seed}), rec)
    stats = rec.records[0].layer_stats
    return stats[0]["grad_norm"] / stats[-1]["grad_norm"]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sigmoid_gradients_vanish_and_the_cures_keep_them(seed: int) -> None:
    sigmoid = first_to_output_ratio("sigmoid", seed)
    relu = first_to_output_ratio("relu", seed)
    resnet = first_to_output_ratio("resnet", seed)
    assert 0 < sigmoid < 1e-6
    assert relu > 1e-5
    assert resnet > 1e-5


def test_deep_sigmoid_contracts_the_signal_without_saturating() -> None:
    rec = ListRecorder()
    train(make_config({"arch": "sigmoid", "depth": 10, "epochs": 1, "samples": 512}), rec)
    stats = rec.records[0].layer_stats
    spreads = [s["act_std"] for s in stats[:-1]]
    # Each layer's spread across inputs shrinks (NOTES.md: ~7x per layer), saturation stays ~0.
    assert all(b < a / 2 for a, b in zip(spreads, spreads[1:], strict=False))
    assert max(s["saturated_frac"] for s in stats[:-1]) < 0.01
    assert rec.records[0].metrics["pred_std"] < 1e-3


def nan_equal(a: list[dict], b: list[dict]) -> bool:
    """Exact equality where NaN equals NaN (not-applicable statistics are NaN)."""

    def key(row: dict) -> dict:
        return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in row.items()}

    return [key(r) for r in a] == [key(r) for r in b]


def test_same_config_and_seed_give_identical_numbers() -> None:
    cfg = make_config({"arch": "resnet", "depth": 4, "width": 8, "samples": 256, "epochs": 3})
    first, second = ListRecorder(), ListRecorder()
    train(cfg, first)
    train(cfg, second)
    for a, b in zip(first.records, second.records, strict=True):
        assert {k: v for k, v in a.metrics.items() if k != "seconds"} == {
            k: v for k, v in b.metrics.items() if k != "seconds"
        }
        assert nan_equal(a.layer_stats, b.layer_stats)  # bit-for-bit, histograms included
        assert a.grid == b.grid
    other = ListRecorder()
    train(cfg.model_copy(update={"seed": 1}), other)
    assert not nan_equal(other.records[0].layer_stats, first.records[0].layer_stats)


def test_diverging_run_ends_diverged_and_keeps_its_epochs(db_path) -> None:  # noqa: ANN001
    engine = make_engine(str(db_path))
    run_id, status = train_foreground(
        engine,  # Found by search: finite for a few epochs, then the loss explodes to NaN.
        {
            "arch": "resnet",
            "depth": "20",
            "optimizer": "sgd",
            "lr": "0.02",
            "momentum": "0.9",
            "epochs": "8",
            "samples": "512",
        },
        progress=False,
    )
    assert status == "diverged"
    doc = run_document(engine, run_id)
    assert doc["status"] == "diverged"
    assert "non-finite" in doc["error"]
    epochs = doc["epochs"]
    assert 2 <= len(epochs) < 8
    assert all(math.isfinite(e["train_loss"]) for e in epochs[:-1])  # earlier epochs kept
    # The last recorded epoch is the one whose loss went non-finite (stored NaN -> null).
    last = epochs[-1]["train_loss"]
    assert last is None or not math.isfinite(last)
    assert len(doc["layer_stats"]) == len(epochs) * 21


def test_two_feature_runs_record_decision_grids_at_a_few_epochs() -> None:
    rec = ListRecorder()
    train(make_config({"depth": 2, "width": 8, "samples": 128, "epochs": 20}), rec)
    grids = {r.epoch for r in rec.records if r.grid is not None}
    assert grids == {1, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20}
    grid = rec.records[0].grid
    assert len(grid.probs) == grid.size * grid.size * 2  # float16
    rec30 = ListRecorder()
    train(make_config({"dataset": "breast_cancer", "depth": 2, "width": 8, "epochs": 1}), rec30)
    assert rec30.records[0].grid is None  # 30 features: no map


def test_threaded_and_in_line_measurement_record_the_same(monkeypatch) -> None:  # noqa: ANN001
    cfg = make_config({"arch": "sigmoid", "depth": 4, "width": 8, "samples": 256, "epochs": 3})
    runs = {}
    for mode in ("1", "0"):
        monkeypatch.setenv("GRADSCOPE_MEASURE_THREAD", mode)
        rec = ListRecorder()
        assert train(cfg, rec).status == "completed"
        runs[mode] = rec.records
    for a, b in zip(runs["1"], runs["0"], strict=True):
        assert a.epoch == b.epoch
        assert nan_equal(a.layer_stats, b.layer_stats)
        assert a.grid == b.grid
        assert {k: v for k, v in a.metrics.items() if k != "seconds"} == {
            k: v for k, v in b.metrics.items() if k != "seconds"
        }


def test_a_run_that_stored_every_epoch_has_completed_whatever_was_asked() -> None:
    rec = ListRecorder()
    cfg = make_config({"depth": 2, "width": 4, "samples": 64, "epochs": 1})
    assert train(cfg, rec, lambda: "interrupted").status == "completed"
    assert len(rec.records) == 1


def test_a_run_marked_lost_meanwhile_keeps_that_status(db_path) -> None:  # noqa: ANN001
    from datetime import timedelta

    from gradscope.db.epoch_writes import EpochWriter
    from gradscope.db.lifecycle import WORKER_LOST, Runtime, create_runs, db_now, recover_lost
    from gradscope.db.queries import get_run
    from gradscope.runner.execute import execute_run
    from gradscope.vocab.records import RunSpec

    engine = make_engine(str(db_path))
    store = EpochWriter(engine)
    cfg = make_config({"depth": 2, "width": 4, "samples": 64, "epochs": 2})
    runtime = Runtime(worker="slow", device="cpu", torch_version="")
    [run_id] = create_runs(engine, [RunSpec(cfg.model_dump())], status="running", runtime=runtime)

    def another_worker_gives_up() -> None:
        recover_lost(engine, 60, now=db_now(engine) + timedelta(seconds=3600))
        return None

    result = execute_run(store, run_id, cfg, another_worker_gives_up)
    stored = get_run(engine, run_id)
    assert (stored.status, stored.error) == ("failed", WORKER_LOST)
    assert (result.status, result.error) == ("failed", WORKER_LOST)


@pytest.mark.slow  # its measuring thread takes seconds to wind down
@pytest.mark.timeout(60)  # the failure this guards against is a hang
def test_a_failing_measurement_ends_training_with_its_error(monkeypatch) -> None:  # noqa: ANN001
    # Blocks of 2 steps and 16-step epochs: the training thread reuses the gradient ring many
    # times while the failed epoch-1 measurement is pending; it must get the error, not wait.
    import reference_loop

    from gradscope.runner import gradient_stats as probes

    monkeypatch.setattr(probes, "BLOCK_STEPS", 2)

    def broken(*_args: object) -> None:
        raise RuntimeError("activation statistics failed")

    monkeypatch.setattr(reference_loop, "activation_stats", broken)
    rec = ListRecorder()
    cfg = {"depth": 2, "width": 4, "samples": 1024, "batch_size": 48, "epochs": 3}
    with pytest.raises(RuntimeError, match="activation statistics failed"):
        train(make_config(cfg), rec)
    assert rec.records == []
