"""A batched group's epoch end written in one transaction (`EpochWriter.record_epochs`, used by
`execute_group` through `gradscope.runner.execute.GroupEpochWriter`): the same rows as one
`record_epoch`
per run, the same heartbeat and cancel flag per run, and the same worker guard."""

from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, Table, select
from worker_helpers import SMALL, queue_runs

from gradscope.db.engine import make_engine
from gradscope.db.epoch_writes import EpochWriter
from gradscope.db.errors import NotFoundError
from gradscope.db.lifecycle import cancel_runs, claim_next, db_now, recover_lost
from gradscope.db.models import DecisionGridModel, EpochMetricModel, LayerStatModel, RunModel
from gradscope.db.queries import get_run
from gradscope.db.transactions import transaction
from gradscope.runner.batched import train_group
from gradscope.runner.execute import execute_group
from gradscope.vocab.config import make_config
from gradscope.vocab.records import DecisionGrid, EpochRecord, LayerInfo, RunSpec


def _record(epoch: int, seed: float, *, grid: bool, diverged: bool = False) -> EpochRecord:
    """An epoch with every kind of value the store writes: metrics, a non-finite step and
    NaN/inf statistics with their finite fallbacks, a histogram, a decision grid."""
    metrics = {"train_loss": 0.5 + seed, "test_acc": 0.75, "seconds": 0.01 * epoch}
    layer = {"grad_norm": 1.0 + seed, "grad_max_abs": 2.0, "grad_hist": bytes([epoch, 1, 2])}
    if diverged:
        metrics["first_nonfinite_step"] = 3
        layer = {
            "grad_norm": math.nan,
            "grad_max_abs": math.inf,
            "finite_first_max_abs": 0.1,
            "finite_max_abs": 0.9 + seed,
            "finite_last_norm": 0.4,
        }
    stats = [layer, {"grad_norm": 3.0 * seed, "dead_frac": 0.25}]
    map_ = DecisionGrid(2, -1.0, 1.0, -2.0, 2.0, bytes(8)) if grid else None
    return EpochRecord(epoch, metrics, stats, map_)


def _rows(engine: Engine, table: Table, run_id: str) -> list[tuple]:
    """A run's rows of one table without the run id (NaN made comparable)."""
    with transaction(engine) as conn:
        rows = conn.execute(
            select(*[c for c in table.c if c.name != "run_id"])
            .where(table.c.run_id == run_id)
            .order_by(*table.primary_key.columns)
        ).all()
    return [
        tuple("nan" if isinstance(v, float) and math.isnan(v) else v for v in row) for row in rows
    ]


def _new_runs(store: EpochWriter, count: int) -> list[str]:
    specs = [RunSpec(make_config({**SMALL, "seed": i}).model_dump()) for i in range(count)]
    return store.create_runs(specs, status="running")


def test_a_group_epoch_write_equals_per_run_writes_row_for_row(sqlite_engine: Engine) -> None:
    engine = sqlite_engine
    store = EpochWriter(engine)
    one_by_one, together = _new_runs(store, 3), _new_runs(store, 3)
    cancel_runs(engine, [one_by_one[1], together[1]])  # a running run: the flag is set
    epochs = [
        [_record(1, 0.0, grid=True), _record(1, 1.0, grid=True), _record(1, 2.0, grid=True)],
        [_record(2, 0.0, grid=False), _record(2, 1.0, grid=False, diverged=True)],
    ]
    for records in epochs:
        per_run = [
            store.record_epoch(run_id, rec)
            for run_id, rec in zip(one_by_one, records, strict=False)
        ]
        batched = store.record_epochs(list(zip(together, records, strict=False)))
        assert batched == per_run  # the cancel flag per run, in order
    assert [
        store.record_epoch(one_by_one[0], _record(3, 0.0, grid=False)),
        store.record_epoch(one_by_one[1], _record(3, 1.0, grid=False)),
    ] == [False, True]
    assert store.record_epochs(
        [(together[0], _record(3, 0.0, grid=False)), (together[1], _record(3, 1.0, grid=False))]
    ) == [False, True]

    tables = [t.__table__ for t in (EpochMetricModel, LayerStatModel, DecisionGridModel)]
    for a, b in zip(one_by_one, together, strict=True):
        for table in tables:
            assert _rows(engine, table, b) == _rows(engine, table, a), table.name
        assert _rows(engine, LayerStatModel.__table__, b)  # something was compared
        run_a, run_b = get_run(engine, a), get_run(engine, b)
        assert run_b.epochs_done == run_a.epochs_done
        assert run_b.heartbeat_at is not None
    # The divergence columns went through: the non-finite step and the finite fallbacks.
    with transaction(engine) as conn:
        step = conn.scalar(
            select(EpochMetricModel.first_nonfinite_step).where(
                EpochMetricModel.run_id == together[1], EpochMetricModel.epoch == 2
            )
        )
        finite_max = conn.scalar(
            select(LayerStatModel.finite_max_abs).where(
                LayerStatModel.run_id == together[1],
                LayerStatModel.epoch == 2,
                LayerStatModel.layer == 0,
            )
        )
    assert (step, finite_max) == (3, pytest.approx(1.9))


def test_a_group_epoch_write_skips_a_run_that_is_no_longer_this_workers(engine: Engine) -> None:
    # Three runs claimed by "slow"; one goes stale, is queued again and claimed by "next".
    ids = queue_runs(engine, 3)
    for _ in ids:
        claim_next(engine, "slow")
    with transaction(engine) as conn:  # only ids[1] looks stale: the others beat just now
        conn.execute(
            RunModel.__table__.update()
            .where(RunModel.__table__.c.id == ids[1])
            .values(heartbeat_at=db_now(engine) - timedelta(seconds=600))
        )
    assert recover_lost(engine, 60, retries=1) == {ids[1]: "queued"}
    assert claim_next(engine, "next").run_ids == (ids[1],)

    slow = EpochWriter(engine, worker="slow")
    answers = slow.record_epochs([(i, _record(1, 0.0, grid=True)) for i in ids])
    assert answers[0] is False and answers[2] is False
    assert isinstance(answers[1], NotFoundError)
    assert "no longer this worker's" in str(answers[1])
    # The others were written; nothing went into the retry.
    assert [len(_rows(engine, EpochMetricModel.__table__, i)) for i in ids] == [1, 0, 1]
    assert get_run(engine, ids[1]).epochs_done == 0
    assert [get_run(engine, i).epochs_done for i in (ids[0], ids[2])] == [1, 1]


class _Keep:
    def __init__(self) -> None:
        self.records: list[EpochRecord] = []

    def start(self, layers: list[LayerInfo], points: object, device: str) -> None:
        pass

    def epoch(self, record: EpochRecord) -> bool:
        self.records.append(record)
        return False


class _FailsMember:
    """An epoch batch whose write fails for member 1 at epoch 2 and keeps the rest."""

    def __init__(self) -> None:
        self.kept: dict[int, list[int]] = {}

    def epochs(self, members: list[int], records: list[EpochRecord]) -> list[bool | Exception]:
        out: list[bool | Exception] = []
        for k, rec in zip(members, records, strict=True):
            if k == 1 and rec.epoch == 2:
                out.append(NotFoundError("gone"))
                continue
            self.kept.setdefault(k, []).append(rec.epoch)
            out.append(False)
        return out


def test_an_epoch_batch_failing_for_one_member_fails_only_that_member() -> None:
    cfgs = [make_config({**SMALL, "epochs": 3, "seed": s}) for s in range(3)]
    alone = train_group(cfgs, [_Keep() for _ in cfgs])
    batch = _FailsMember()
    results = train_group(cfgs, [_Keep() for _ in cfgs], epoch_batch=batch)
    assert [r.status for r in results] == ["completed", "failed", "completed"]
    assert results[1].error == "gradscope.db.errors.NotFoundError: gone"
    assert batch.kept == {0: [1, 2, 3], 1: [1], 2: [1, 2, 3]}
    # The others' numbers are those of the same group without the failure.
    for k in (0, 2):
        assert {m: v for m, v in results[k].final.items() if m != "seconds"} == {
            m: v for m, v in alone[k].final.items() if m != "seconds"
        }


class _CountingStore(EpochWriter):
    """A EpochWriter that counts its epoch writes."""

    per_run = 0
    per_group: list[int] = []

    def record_epoch(self, run_id: str, record: EpochRecord, **kw: object) -> bool:
        self.per_run += 1
        return super().record_epoch(run_id, record, **kw)

    def record_epochs(self, items: list[tuple[str, EpochRecord]]) -> list:
        self.per_group.append(len(items))
        return super().record_epochs(items)


def test_execute_group_writes_each_group_epoch_in_one_transaction(db_path: Path) -> None:
    engine = make_engine(str(db_path))
    store = _CountingStore(engine)
    store.per_group = []
    cfgs = [make_config({**SMALL, "epochs": 2 + (s == 0), "seed": s}) for s in range(4)]
    ids = store.create_runs(
        [RunSpec(c.model_dump(), group_id="g", group_index=i) for i, c in enumerate(cfgs)],
        status="running",
    )
    results = execute_group(store, ids, cfgs)
    assert [r.status for r in results] == ["completed"] * 4
    # One write per group epoch for all its members (the longer member alone at epoch 3).
    assert (store.per_run, store.per_group) == (0, [4, 4, 1])
    assert [get_run(engine, i).epochs_done for i in ids] == [3, 2, 2, 2]
    assert len(_rows(engine, LayerStatModel.__table__, ids[1])) == 2 * 3  # 2 epochs x 3 layers
    engine.dispose()
