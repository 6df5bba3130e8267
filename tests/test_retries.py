"""Lost runs are queued again (`--retries`), for every worker kind, on a real SQLite file:
attempts counted in the claim, partial epochs discarded in the requeue, a run that keeps getting
lost fails. Also the `--ray` option's refusals, which need no Ray instance."""

from __future__ import annotations

import multiprocessing
import socket
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from typer.testing import CliRunner
from worker_helpers import SMALL, epoch_rows, queue_runs

import gradscope.runner.ray_workers as ray_workers
from gradscope.cli import app
from gradscope.db.engine import make_engine
from gradscope.db.epoch_writes import EpochWriter
from gradscope.db.errors import NotFoundError
from gradscope.db.lifecycle import (
    WORKER_LOST,
    Runtime,
    cancel_runs,
    claim_next,
    create_runs,
    db_now,
    queue_sweep,
    queued_demand,
    recover_lost,
)
from gradscope.db.models import LayerStatModel, RunLayerModel
from gradscope.db.queries import get_run
from gradscope.db.transactions import orm, transaction
from gradscope.runner.worker import RunBudget, WorkerOptions, run_slot
from gradscope.vocab.config import make_config
from gradscope.vocab.records import EpochRecord, LayerInfo, RunSpec
from gradscope.vocab.sweep import plan_sweep


@pytest.fixture
def engine(db_path: Path) -> Engine:
    engine = make_engine(str(db_path))
    yield engine
    engine.dispose()


def _later(engine: Engine) -> object:
    """A time at which every heartbeat written so far is a minute stale (no sleeping)."""
    return db_now(engine) + timedelta(seconds=120)


def _record_partial(engine: Engine, run_id: str, epochs: int) -> None:
    """What a worker that died after `epochs` epochs leaves behind: layers and epochs."""
    store = EpochWriter(engine)
    store.record_layers(run_id, [LayerInfo(0, "fc0", "linear", "relu", 2, 8, 24)], None)
    for epoch in range(1, epochs + 1):
        stats = [{"grad_norm": 1.0}]
        store.record_epoch(run_id, EpochRecord(epoch, {"train_loss": 0.5}, stats))


def _count(engine: Engine, model: type, run_id: str) -> int:
    with transaction(engine) as conn, orm(conn) as s:
        return s.scalar(select(func.count()).select_from(model).where(model.run_id == run_id))


def test_claim_counts_attempts_and_records_the_host(engine: Engine) -> None:
    [run_id] = queue_runs(engine, 1)
    assert get_run(engine, run_id).attempts == 0
    claim = claim_next(engine, "w1")
    assert claim is not None and claim.run_ids == (run_id,)
    run = get_run(engine, run_id)
    assert (run.attempts, run.hostname) == (1, socket.gethostname())


def test_lost_run_is_queued_again_without_its_partial_epochs(engine: Engine) -> None:
    [run_id] = queue_runs(engine, 1)
    claim_next(engine, "dead")
    _record_partial(engine, run_id, 2)
    assert epoch_rows(engine, run_id) == [1, 2]

    assert recover_lost(engine, 60, now=_later(engine), retries=1) == {run_id: "queued"}
    run = get_run(engine, run_id)
    assert (run.status, run.epochs_done, run.worker, run.error) == ("queued", 0, None, None)
    assert run.attempts == 1
    # Removed in the same transaction, so the retry records epochs 1.. afresh, not twice.
    assert epoch_rows(engine, run_id) == []
    assert _count(engine, LayerStatModel, run_id) == 0
    assert _count(engine, RunLayerModel, run_id) == 0

    # Second attempt: lost again, and the one retry is spent: failed, its epochs kept.
    claim_next(engine, "dead-too")
    assert get_run(engine, run_id).attempts == 2
    _record_partial(engine, run_id, 1)
    assert recover_lost(engine, 60, now=_later(engine), retries=1) == {run_id: "failed"}
    run = get_run(engine, run_id)
    assert (run.status, run.error, run.attempts) == ("failed", WORKER_LOST, 2)
    assert epoch_rows(engine, run_id) == [1]


def test_the_lost_attempts_worker_cannot_write_into_the_retry(engine: Engine) -> None:
    # The first worker was only slow (its heartbeat went stale, it is alive): once its run is
    # queued again and claimed by another worker, its late writes must change nothing.
    [run_id] = queue_runs(engine, 1)
    claim_next(engine, "slow")
    assert recover_lost(engine, 60, now=_later(engine), retries=1) == {run_id: "queued"}
    claim_next(engine, "next")
    slow, current = EpochWriter(engine, worker="slow"), EpochWriter(engine, worker="next")
    with pytest.raises(NotFoundError, match="no longer this worker's"):
        slow.record_epoch(run_id, EpochRecord(1, {"train_loss": 0.5}, []))
    assert not slow.finish_run(run_id, "failed", error="late")
    assert epoch_rows(engine, run_id) == []
    current.record_epoch(run_id, EpochRecord(1, {"train_loss": 0.4}, []))
    assert current.finish_run(run_id, "completed")
    run = get_run(engine, run_id)
    assert (run.status, run.worker, run.epochs_done, run.error) == ("completed", "next", 1, None)


def test_no_retries_and_cancel_requested_runs_fail(engine: Engine) -> None:
    plain, cancelled = queue_runs(engine, 2)
    claim_next(engine, "dead")
    claim_next(engine, "dead")
    cancel_runs(engine, [cancelled])
    assert recover_lost(engine, 60, now=_later(engine), retries=0) == {
        plain: "failed",
        cancelled: "failed",
    }
    # A foreground run (never claimed from the queue) is not queued again either.
    [foreground] = create_runs(
        engine,
        [RunSpec(make_config(SMALL).model_dump())],
        status="running",
        runtime=Runtime(worker="fg", device="cpu", torch_version=""),
    )
    assert recover_lost(engine, 60, now=_later(engine), retries=3) == {foreground: "failed"}
    # A fresh heartbeat is not lost, whatever the retries.
    [alive] = queue_runs(engine, 1)
    claim_next(engine, "alive")
    assert recover_lost(engine, 60, retries=5) == {}
    assert get_run(engine, alive).status == "running"


def test_a_lost_group_is_queued_again_whole(engine: Engine) -> None:
    plan = plan_sweep({**{k: str(v) for k, v in SMALL.items()}, "seed": "0,1,2"}, batch=True)
    ids = queue_sweep(engine, plan)
    solo = queue_runs(engine, 2, seed=9)
    assert queued_demand(engine) == 3  # one group, two solo runs
    claim = claim_next(engine, "dead")
    assert claim is not None and set(claim.run_ids) == set(ids)
    assert queued_demand(engine) == 2
    assert recover_lost(engine, 60, now=_later(engine), retries=1) == dict.fromkeys(ids, "queued")
    again = claim_next(engine, "next")
    assert again is not None and set(again.run_ids) == set(ids)
    assert {get_run(engine, i).attempts for i in ids} == {2}
    assert {get_run(engine, i).status for i in solo} == {"queued"}


def test_plain_worker_retries_a_lost_run_and_completes_it(db_path: Path, engine: Engine) -> None:
    # A worker died after two epochs; the next plain worker (stale-after 0: any heartbeat in
    # the past is lost) queues the run again as it starts and trains it from epoch 1.
    [run_id] = queue_runs(engine, 1, epochs=3)
    claim_next(engine, "dead")
    _record_partial(engine, run_id, 2)
    opts = WorkerOptions(db=str(db_path), exit_when_idle=True, stale_after_s=0.0, retries=1)
    assert run_slot(opts, RunBudget(None, multiprocessing.Value("i", 0))) == 1
    run = get_run(engine, run_id)
    assert (run.status, run.attempts, run.epochs_done) == ("completed", 2, 3)
    assert epoch_rows(engine, run_id) == [1, 2, 3]


def test_show_prints_attempts(db_path: Path, engine: Engine) -> None:
    [run_id] = queue_runs(engine, 1)
    claim_next(engine, "w")
    result = CliRunner().invoke(app, ["show", run_id, "--db", str(db_path)])
    assert result.exit_code == 0, result.output
    assert f"attempts: 1  host: {socket.gethostname()}" in result.output


# -- `--ray` refusals (no Ray instance needed) ------------------------------------------------


def test_ray_with_a_sqlite_file_and_a_cluster_is_refused(db_path: Path, engine: Engine) -> None:
    [run_id] = queue_runs(engine, 1)
    result = CliRunner().invoke(app, ["worker", "--db", str(db_path), "--ray", "auto"])
    assert result.exit_code == 2
    assert "PostgreSQL" in result.output and "SQLite" in result.output
    assert get_run(engine, run_id).status == "queued"


def test_ray_missing_says_how_to_install(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, engine: Engine
) -> None:
    monkeypatch.setattr(ray_workers, "ray_installed", lambda: False)
    result = CliRunner().invoke(app, ["worker", "--db", str(db_path), "--ray", "local"])
    assert result.exit_code != 0
    assert "pip install 'gradscope[ray]'" in result.output
    assert "Traceback" not in result.output


def test_compare_page_shows_attempts(monkeypatch: pytest.MonkeyPatch, db_path: Path) -> None:
    from dashboard_helpers import add_run, open_app
    from sqlalchemy import update

    from gradscope.db.models import RunModel

    engine = make_engine(str(db_path))
    run_id = add_run(engine)
    with transaction(engine) as conn, orm(conn) as s:
        s.execute(update(RunModel).where(RunModel.id == run_id).values(attempts=2))
    engine.dispose()
    at = open_app(monkeypatch, db_path, "compare", {"runs": run_id})
    (caption,) = [c.value.replace("\\", "") for c in at.caption if c.value.startswith("Retried")]
    assert "(2 attempts)" in caption and "\n" not in caption, caption


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-workers", "4"], "need --ray ADDRESS"),
        (["--ray", "local", "--gpus-per-worker", "1.5"], "must be a whole number"),
    ],
)
def test_ray_options_are_checked(db_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["worker", "--db", str(db_path), *args])
    assert result.exit_code == 2
    assert message in result.output
