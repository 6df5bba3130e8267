"""Batched ensembles: each member is recorded exactly as its solo run would be.

The configurations are small on purpose: depth 5, width 16, 256 samples, batch 32 and 3 epochs
make 18 optimizer steps. The batched kernels (`bmm`) and the solo ones (`addmm`) round
differently in the last bit; over a few steps those differences stay at float32 rounding
(~1e-7 relative), while hundreds of steps of a deep plain-ReLU net can amplify them chaotically
even in float64, so a longer run would test chaos, not the ensemble. Deep enough that the
sigmoid net's first-layer gradients are already far below the output layer's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from reference_loop import TrainResult, train
from sqlalchemy import event, update

from gradscope.db.engine import make_engine
from gradscope.db.epoch_writes import EpochWriter
from gradscope.db.models import RunModel
from gradscope.db.queries import run_document
from gradscope.runner import batched as ensemble
from gradscope.runner import execute as execute_module
from gradscope.runner.batched import train_group
from gradscope.runner.execute import execute_group, execute_run
from gradscope.runner.gradient_stats import activation_stats
from gradscope.vocab.config import RunConfig, make_config
from gradscope.vocab.fields import LAYER_STAT_FIELDS
from gradscope.vocab.grouping import group_key, plan_groups
from gradscope.vocab.records import EpochRecord, FinalMetrics, LayerInfo, RunSpec

SMALL = {"depth": 5, "width": 16, "samples": 256, "epochs": 3, "batch_size": 32, "device": "cpu"}
SEEDS = (0, 1, 2, 3)


@dataclass
class ListRecorder:
    """Keeps everything a run records; can cancel at an epoch, fail at one, or cancel from
    its mid-epoch poll."""

    cancel_at: int | None = None
    fail_at: int | None = None
    poll_cancels_in_epoch: int | None = None
    records: list[EpochRecord] = field(default_factory=list)
    layers: list[LayerInfo] = field(default_factory=list)
    points: tuple[int, bytes] | None = None
    device: str = ""

    def start(self, layers: list[LayerInfo], points: tuple[int, bytes] | None, device: str) -> None:
        self.layers, self.points, self.device = layers, points, device

    def epoch(self, record: EpochRecord) -> bool:
        if record.epoch == self.fail_at:
            raise RuntimeError(f"storage broke in epoch {record.epoch}")
        self.records.append(record)
        return record.epoch == self.cancel_at

    def poll(self) -> bool:
        # Polled mid-epoch: epochs recorded so far + 1 is the epoch being trained.
        return len(self.records) + 1 == self.poll_cancels_in_epoch


def configs(**overrides: Any) -> list[RunConfig]:
    return [make_config({**SMALL, **overrides, "seed": seed}) for seed in SEEDS]


def solo(cfg: RunConfig) -> tuple[TrainResult, ListRecorder]:
    rec = ListRecorder()
    return train(cfg, rec), rec


def group(cfgs: list[RunConfig], **kwargs: Any) -> tuple[list[TrainResult], list[ListRecorder]]:
    recs = [ListRecorder(**kwargs) for _ in cfgs]
    return train_group(cfgs, recs), recs


def close(got: float | None, want: float | None, rel: float, floor: float) -> bool:
    if got is None or want is None:
        return got is want
    if math.isnan(want):
        return math.isnan(got)
    return got == pytest.approx(want, rel=rel, abs=floor)


def assert_same_run(
    got: tuple[TrainResult, ListRecorder],
    want: tuple[TrainResult, ListRecorder],
    tight: bool = False,
) -> None:
    """Same status, epochs, layers, points and, epoch by epoch, the same metrics, per-layer
    statistics, gradient histograms and decision grids. `tight`: the same batched kernels on
    both sides, so only a last-bit difference is allowed (a leak would be far larger)."""
    (g_res, g_rec), (w_res, w_rec) = got, want
    assert (g_res.status, g_res.epochs_done) == (w_res.status, w_res.epochs_done)
    assert (g_rec.layers, g_rec.points, g_rec.device) == (w_rec.layers, w_rec.points, w_rec.device)
    assert len(g_rec.records) == len(w_rec.records)
    rel_loss, rel_stat = (1e-6, 1e-6) if tight else (1e-4, 1e-2)
    for g, w in zip(g_rec.records, w_rec.records, strict=True):
        assert g.epoch == w.epoch
        for key in ("train_loss", "test_loss"):
            assert close(g.metrics[key], w.metrics[key], rel_loss, 0), (g.epoch, key)
        for key in ("train_acc", "test_acc"):  # fractions of the same examples: exact
            assert g.metrics[key] == pytest.approx(w.metrics[key], abs=1e-6), (g.epoch, key)
        # The spread of nearly constant probabilities (a deep sigmoid's ~1e-6 around 0.5) is
        # resolved only to float32's step there (6e-8), hence relative 1e-2 above a floor.
        assert close(g.metrics["pred_std"], w.metrics["pred_std"], rel_stat, 1e-7), g.epoch
        for layer, (gs, ws) in enumerate(zip(g.layer_stats, w.layer_stats, strict=True)):
            for key in LAYER_STAT_FIELDS:
                assert close(gs[key], ws[key], rel_stat, 1e-12), (g.epoch, layer, key)
            g_hist = np.frombuffer(gs["grad_hist"], dtype="<i4")
            w_hist = np.frombuffer(ws["grad_hist"], dtype="<i4")
            assert g_hist.sum() == w_hist.sum()
            # A gradient sitting on a log10 bin edge may move one bin: a count of two.
            assert np.abs(g_hist - w_hist).sum() <= (0 if tight else 2)
        assert (g.grid is None) == (w.grid is None)
        if g.grid is not None and w.grid is not None:
            g_probs = np.frombuffer(g.grid.probs, dtype="<f2").astype(np.float32)
            w_probs = np.frombuffer(w.grid.probs, dtype="<f2").astype(np.float32)
            assert (g.grid.x_min, g.grid.y_max) == (w.grid.x_min, w.grid.y_max)
            assert np.allclose(g_probs, w_probs, atol=2e-3, equal_nan=True)
    for key in ("train_acc", "test_acc"):
        assert g_res.final.get(key) == pytest.approx(w_res.final.get(key), abs=1e-6)


# -- equivalence with solo runs ----------------------------------------------------------------


@pytest.mark.parametrize("arch", ["sigmoid", "relu", "resnet"])
def test_each_member_matches_its_solo_run(arch: str) -> None:
    cfgs = configs(arch=arch, optimizer="adam", lr=1e-2)
    results, recs = group(cfgs)
    for cfg, result, rec in zip(cfgs, results, recs, strict=True):
        assert result.status == "completed"
        assert_same_run((result, rec), solo(cfg))
    # Members really are different models (own init, data, shuffle), not four copies.
    assert len({r.records[-1].metrics["train_loss"] for r in recs}) == len(SEEDS)
    if arch == "sigmoid":
        first = recs[0].records[0].layer_stats[0]["grad_norm"]
        assert 0 < first < 1e-2 * recs[0].records[0].layer_stats[-1]["grad_norm"]


@pytest.mark.parametrize(
    ("optimizer", "arch", "lrs", "momenta"),
    [
        ("sgd", "relu", (0.02, 0.05, 0.1, 0.2), (0.0, 0.5, 0.9, 0.0)),
        ("adam", "resnet", (1e-3, 3e-3, 1e-2, 3e-2), (0.0, 0.0, 0.0, 0.0)),
    ],
)
def test_per_member_settings_match_solo_runs(
    optimizer: str, arch: str, lrs: tuple[float, ...], momenta: tuple[float, ...]
) -> None:
    """Members differ in lr, momentum, epochs (so the stack shrinks as they finish), init
    scheme and data noise; each still equals its own solo run."""
    epochs = (2, 3, 4, 3)
    inits = ("default", "he", "xavier", "default")
    noises = (0.1, 0.2, 0.3, 0.2)
    cfgs = [
        make_config(
            {
                **SMALL,
                "arch": arch,
                "optimizer": optimizer,
                "lr": lr,
                "momentum": momentum,
                "epochs": n,
                "init": init,
                "noise": noise,
                "seed": seed,
            }
        )
        for seed, lr, momentum, n, init, noise in zip(
            SEEDS, lrs, momenta, epochs, inits, noises, strict=True
        )
    ]
    assert len({group_key(c) for c in cfgs}) == 1
    results, recs = group(cfgs)
    for cfg, result, rec in zip(cfgs, results, recs, strict=True):
        assert (result.status, result.epochs_done, len(rec.records)) == (
            "completed",
            cfg.epochs,
            cfg.epochs,
        )
        assert_same_run((result, rec), solo(cfg))


def test_a_group_of_one_is_its_solo_run() -> None:
    cfg = make_config({**SMALL, "arch": "resnet", "optimizer": "sgd", "lr": 0.1, "seed": 7})
    results, recs = group([cfg])
    assert_same_run((results[0], recs[0]), solo(cfg))


@pytest.mark.parametrize("arch", ["sigmoid", "relu", "resnet"])
@pytest.mark.parametrize(
    "optimizer", [{"optimizer": "sgd", "lr": 0.05, "momentum": 0.9}, {"optimizer": "adam"}]
)
def test_a_solo_run_on_the_fast_engine_matches_the_autograd_reference(
    arch: str, optimizer: dict[str, Any]
) -> None:
    """Solo runs train as a group of one (gradscope.runner.execute); train() is the reference: every
    metric and statistic of every epoch within the README's tolerances."""
    cfg = make_config({**SMALL, "arch": arch, **optimizer, "seed": 3})
    results, recs = group([cfg])
    assert results[0].status == "completed"
    assert_same_run((results[0], recs[0]), solo(cfg))


def test_execute_run_trains_a_solo_run_as_a_group_of_one(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """execute_run goes through train_group, and stores what train() would have stored."""
    engine = make_engine(str(db_path))
    store = EpochWriter(engine)
    cfg = make_config({**SMALL, "arch": "relu", "optimizer": "sgd", "momentum": 0.9, "seed": 5})
    calls: list[int] = []

    def spy(cfgs: list[RunConfig], *args: Any, **kwargs: Any) -> list[TrainResult]:
        calls.append(len(cfgs))
        return train_group(cfgs, *args, **kwargs)

    monkeypatch.setattr(execute_module, "train_group", spy)
    fast_id, reference_id = create_running(store, [cfg, cfg], group_id=None)
    assert execute_run(store, fast_id, cfg).status == "completed"
    assert calls == [1]
    result = train(cfg, execute_module.DbRecorder(store, reference_id))
    store.finish_run(reference_id, result.status, final=FinalMetrics.from_metrics(result.final))
    assert_documents_match(run_document(engine, fast_id), run_document(engine, reference_id))
    engine.dispose()


# -- members that end early --------------------------------------------------------------------


def test_a_diverging_member_ends_diverged_and_leaves_the_others_unchanged() -> None:
    healthy = configs(arch="relu", optimizer="sgd", lr=0.05)[:3]
    wild = make_config({**SMALL, "arch": "relu", "optimizer": "sgd", "lr": 50.0, "seed": 3})
    results, recs = group([*healthy, wild])
    bad, bad_rec = results[3], recs[3]
    assert bad.status == "diverged"
    assert bad.epochs_done < SMALL["epochs"]
    assert "non-finite" in (bad.error or "")
    # The diverging epoch is recorded (as a solo run records it), and nothing after it.
    assert len(bad_rec.records) == bad.epochs_done
    assert not math.isfinite(bad_rec.records[-1].metrics["train_loss"])
    assert_same_run((bad, bad_rec), solo(wild))
    alone_results, alone_recs = group(healthy)
    for i in range(3):
        assert results[i].status == "completed"
        assert_same_run((results[i], recs[i]), (alone_results[i], alone_recs[i]), tight=True)


def test_a_cancelled_member_stops_and_the_others_finish_unchanged() -> None:
    cfgs = configs(arch="resnet", optimizer="adam", lr=1e-2)
    recs = [ListRecorder(cancel_at=2 if i == 1 else None) for i in range(len(cfgs))]
    results = train_group(cfgs, recs)
    assert (results[1].status, results[1].epochs_done, len(recs[1].records)) == ("cancelled", 2, 2)
    plain_results, plain_recs = group(cfgs)
    for i in (0, 2, 3):
        assert results[i].status == "completed"
        assert_same_run((results[i], recs[i]), (plain_results[i], plain_recs[i]), tight=True)
    # What it recorded before stopping equals the uncancelled run's first two epochs.
    assert recs[1].records[1].metrics["train_loss"] == pytest.approx(
        plain_recs[1].records[1].metrics["train_loss"], rel=1e-6
    )


def test_a_mid_epoch_cancel_drops_that_member_without_recording_its_epoch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(ensemble, "STOP_CHECK_SECONDS", 0.0)  # poll after every step
    cfgs = configs(arch="relu", optimizer="adam", lr=1e-2)
    recs = [ListRecorder(poll_cancels_in_epoch=2 if i == 0 else None) for i in range(len(cfgs))]
    done: list[tuple[int, str]] = []
    results = train_group(cfgs, recs, on_done=lambda k, r: done.append((k, r.status)))
    assert (results[0].status, results[0].epochs_done, len(recs[0].records)) == ("cancelled", 1, 1)
    # It was finished at once, mid-epoch 2, before any other member ended.
    assert done[0] == (0, "cancelled")
    plain_results, plain_recs = group(cfgs)
    for i in (1, 2, 3):
        assert_same_run((results[i], recs[i]), (plain_results[i], plain_recs[i]), tight=True)


def test_a_failing_recorder_fails_only_its_member() -> None:
    cfgs = configs(arch="sigmoid", optimizer="adam", lr=1e-2)
    recs = [ListRecorder(fail_at=2 if i == 2 else None) for i in range(len(cfgs))]
    results = train_group(cfgs, recs)
    assert results[2].status == "failed"
    assert "storage broke in epoch 2" in (results[2].error or "")
    plain_results, plain_recs = group(cfgs)
    for i in (0, 1, 3):
        assert_same_run((results[i], recs[i]), (plain_results[i], plain_recs[i]), tight=True)


def test_should_stop_ends_every_member_like_a_solo_run() -> None:
    """The group's should_stop (a worker shutting down) is read at each epoch end, as train()
    reads it: every member still training ends with that status and its epochs kept."""
    cfgs = configs(arch="relu", optimizer="adam", lr=1e-2)
    recs = [ListRecorder() for _ in cfgs]

    def stop_after_two_epochs() -> str | None:
        return "interrupted" if len(recs[0].records) >= 2 else None

    results = train_group(cfgs, recs, stop_after_two_epochs)
    # train() measures and stores each epoch while the next trains, so it can't wait on its
    # recorder: its should_stop says stop at the first check (the end of epoch 1), and the run
    # stops with exactly the epochs it stored.
    solo_rec = ListRecorder()
    solo_result = train(cfgs[0], solo_rec, lambda: "interrupted")
    assert (solo_result.status, solo_result.epochs_done) == ("interrupted", 1)
    assert len(solo_rec.records) == 1
    for result, rec in zip(results, recs, strict=True):
        assert (result.status, result.epochs_done, len(rec.records)) == ("interrupted", 2, 2)
        assert result.final == rec.records[-1].metrics


# -- grouping ----------------------------------------------------------------------------------


def test_group_key_separates_shapes_and_keeps_per_member_settings_together() -> None:
    base = make_config({"arch": "resnet", "depth": 6})
    same = [
        {"seed": 5},
        {"lr": 0.01},
        {"epochs": 7},
        {"init": "he"},
        {"noise": 0.3},
        {"name": "other"},
    ]
    for change in same:
        assert group_key(base.model_copy(update=change)) == group_key(base), change
    different = [
        {"arch": "relu"},
        {"depth": 7},
        {"width": 8},
        {"block_activation": "sigmoid"},
        {"dataset": "circles"},
        {"samples": 1000},
        {"test_fraction": 0.3},
        {"batch_size": 32},
        {"optimizer": "sgd"},
        {"device": "cpu"},
    ]
    for change in different:
        assert group_key(base.model_copy(update=change)) != group_key(base), change
    # block_activation shapes only residual nets; samples only generated datasets.
    relu = make_config({"arch": "relu"})
    assert group_key(relu.model_copy(update={"block_activation": "sigmoid"})) == group_key(relu)
    cancer = make_config({"dataset": "breast_cancer"})
    assert group_key(cancer.model_copy(update={"samples": 100})) == group_key(cancer)


def test_plan_groups_chunks_evenly_in_order() -> None:
    sigmoid = [make_config({"arch": "sigmoid", "seed": s}) for s in range(40)]
    relu = [make_config({"arch": "relu", "seed": s}) for s in range(3)]
    cfgs = [relu[0], *sigmoid[:20], relu[1], *sigmoid[20:], relu[2]]
    groups = plan_groups(cfgs, max_size=32)
    assert sorted(i for g in groups for i in g) == list(range(len(cfgs)))
    assert [len(g) for g in groups] == [3, 20, 20]  # 40 -> 20 + 20, not 32 + 8
    assert groups[0] == [0, 21, 42]
    for g in groups:
        assert len({group_key(cfgs[i]) for i in g}) == 1
        assert g == sorted(g)
    assert plan_groups(cfgs, max_size=1) == [[i] for i in groups[0]] + [
        [i] for g in groups[1:] for i in g
    ]
    with pytest.raises(ValueError, match="at least 1"):
        plan_groups(cfgs, max_size=0)
    # Chunks are cut as numpy's array_split cuts them (grouping no longer imports numpy).
    for n in (1, 2, 5, 33, 40, 65, 97):
        for size in (1, 3, 16, 32, 64):
            same = [make_config({"arch": "sigmoid", "seed": s}) for s in range(n)]
            want = [list(part) for part in np.array_split(np.arange(n), -(-n // size))]
            assert plan_groups(same, max_size=size) == want, (n, size)


def test_train_group_refuses_members_of_different_shapes() -> None:
    cfgs = [make_config({**SMALL, "depth": 3}), make_config({**SMALL, "depth": 4})]
    with pytest.raises(ValueError, match="group_key"):
        train_group(cfgs, [ListRecorder(), ListRecorder()])


# -- through the database ----------------------------------------------------------------------

# Identity and bookkeeping, not what training recorded (`seq` is creation order).
IGNORED = {"id", "created_at", "started_at", "finished_at", "heartbeat_at", "group_id", "seq"}


def assert_documents_match(got: Any, want: Any, path: str = "") -> None:
    """Equal JSON documents, floats within the statistics' tolerance (seconds ignored)."""
    if isinstance(want, dict):
        keys = set(want) - IGNORED - {"seconds"}
        assert set(got) - IGNORED - {"seconds"} == keys, path
        for key in keys:
            assert_documents_match(got[key], want[key], f"{path}.{key}")
    elif isinstance(want, list):
        assert len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_documents_match(g, w, f"{path}[{i}]")
    elif isinstance(want, float):
        assert isinstance(got, float | int), path
        assert close(float(got), want, 1e-2, 1e-7), (path, got, want)
    else:
        assert got == want, path


def create_running(store: EpochWriter, cfgs: list[RunConfig], group_id: str | None) -> list[str]:
    specs = [
        RunSpec(c.model_dump(), group_id=group_id, group_index=i if group_id else None)
        for i, c in enumerate(cfgs)
    ]
    return store.create_runs(specs, status="running")


def test_execute_group_records_each_member_as_execute_run_does(db_path: Path) -> None:
    engine = make_engine(str(db_path))
    store = EpochWriter(engine)
    cfgs = [
        *configs(arch="relu", optimizer="sgd", lr=0.05, momentum=0.5)[:2],
        make_config({**SMALL, "arch": "relu", "optimizer": "sgd", "lr": 50.0, "seed": 9}),
    ]
    group_ids = create_running(store, cfgs, group_id="g1")
    results = execute_group(store, group_ids, cfgs)
    assert [r.status for r in results] == ["completed", "completed", "diverged"]
    solo_ids = create_running(store, cfgs, group_id=None)
    for run_id, cfg in zip(solo_ids, cfgs, strict=True):
        execute_run(store, run_id, cfg)
    for got_id, want_id in zip(group_ids, solo_ids, strict=True):
        got, want = run_document(engine, got_id), run_document(engine, want_id)
        assert got["group_id"] == "g1"
        assert got["epochs"] and got["layer_stats"]
        assert_documents_match(got, want)
    engine.dispose()


def test_a_cancel_request_reaches_its_member_mid_epoch_with_one_read_per_check(
    db_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ensemble, "STOP_CHECK_SECONDS", 0.0)  # check after every step
    engine = make_engine(str(db_path))
    store = EpochWriter(engine)
    cfgs = configs(arch="relu", optimizer="adam", lr=1e-2)
    ids = create_running(store, cfgs, group_id="g3")
    reads: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def count(_conn, _cursor, statement, _params, _context, _many) -> None:  # noqa: ANN001
        if statement.lstrip().upper().startswith("SELECT") and "cancel_requested" in statement:
            reads.append(statement)

    # Requested before training starts: the member stops at its first mid-epoch check.
    with engine.begin() as conn:
        conn.execute(update(RunModel).where(RunModel.id == ids[1]).values(cancel_requested=True))
    results = execute_group(store, ids, cfgs)
    assert [r.status for r in results] == ["completed", "cancelled", "completed", "completed"]
    assert run_document(engine, ids[1])["epochs"] == []
    # One query answers every member's check (at most one per 0.5 s, however many members).
    steps = cfgs[0].epochs * math.ceil(192 / cfgs[0].batch_size)
    assert 1 <= len(reads) <= steps
    engine.dispose()


def test_execute_group_fails_every_member_when_the_group_cannot_train(
    db_path: Path, tmp_path: Path
) -> None:
    engine = make_engine(str(db_path))
    store = EpochWriter(engine)
    missing = tmp_path / "gone.csv"
    cfgs = [make_config({**SMALL, "dataset": f"csv:{missing}", "seed": s}) for s in (0, 1)]
    ids = create_running(store, cfgs, group_id="g2")
    results = execute_group(store, ids, cfgs)
    (solo_id,) = create_running(store, cfgs[:1], group_id=None)
    want = execute_run(store, solo_id, cfgs[0])
    assert want.status == "failed"
    for run_id, result in zip(ids, results, strict=True):
        assert (result.status, result.error) == ("failed", want.error)
        doc = run_document(engine, run_id)
        assert (doc["status"], doc["error"], doc["epochs"]) == ("failed", want.error, [])
    engine.dispose()


# -- the faster activation statistics (gradscope.runner.gradient_stats, shared with solo runs)
# --------------------


def test_activation_spread_matches_float64_and_is_zero_for_a_constant_unit() -> None:
    gen = torch.Generator().manual_seed(0)
    spread = torch.rand(3, 200, 4, generator=gen)
    # A contracted layer: values 0.5 apart by a few float32 steps, and one constant unit.
    near = 0.5 + torch.randint(0, 4, (3, 200, 4), generator=gen) * 2.0**-24
    near[:, :, 0] = 0.4854
    for a in (spread, near):
        want = a.double().std(dim=1, unbiased=False).mean(dim=1)
        got = activation_stats([a], ["sigmoid"])["act_std"][0]
        assert torch.allclose(got.double(), want, rtol=1e-5, atol=1e-12)
    constant = torch.full((2, 128, 1), 0.4854)
    assert activation_stats([constant], ["sigmoid"])["act_std"].tolist() == [[0.0, 0.0]]
    relu = torch.tensor([[[0.0, 1.0, float("nan")], [0.0, 0.0, 0.0]]])
    assert activation_stats([relu], ["relu"])["dead_frac"].tolist() == [[pytest.approx(1 / 3)]]


def test_activation_health_matches_the_obvious_computation() -> None:
    """The in-place passes of activation_stats against each statistic written out plainly."""
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(3, 64, 5, generator=gen)
    a[0, :10, 0] = 0.995  # saturated high
    a[1, :7, 1] = 0.004  # saturated low
    a[2, 3, 2] = float("nan")  # neither saturated nor dead
    a[2, :, 3] = 0.0  # a dead ReLU unit
    signed = a * 2 - 1  # for tanh: |a| > 0.98 near +-1
    for kind, acts in (("sigmoid", a), ("relu", a - 0.5), ("tanh", signed)):
        got = activation_stats([acts], [kind])
        x = acts.double()
        want_std = x.std(dim=1, unbiased=False).mean(dim=1)
        assert torch.allclose(got["act_mean"][0].double(), x.mean(dim=(1, 2)), equal_nan=True)
        assert torch.allclose(got["act_std"][0].double(), want_std, rtol=1e-5, equal_nan=True)
        if kind == "sigmoid":
            want = ((x < 0.01) | (x > 0.99)).double().mean(dim=(1, 2))
        elif kind == "tanh":
            want = (x.abs() > 0.98).double().mean(dim=(1, 2))
        else:
            want = (x.amax(dim=1) <= 0).double().mean(dim=1)
        field = "dead_frac" if kind == "relu" else "saturated_frac"
        other = "saturated_frac" if kind == "relu" else "dead_frac"
        assert torch.allclose(got[field][0].double(), want), kind
        assert got[other][0].isnan().all(), kind
    # The inputs are left as they were (the passes work in a scratch tensor).
    assert a[0, 0, 0] == pytest.approx(0.995) and a[2, 3, 2].isnan()
