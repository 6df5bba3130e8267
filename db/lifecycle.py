"""The run lifecycle: every change of a run's status, and nothing else. All of its SQL lives here.

    create_runs ──> queued ──claim_next──> running ──finish_run──> completed / diverged / failed
        │             │ ^                    │  │                   / cancelled / interrupted
        │             │ └──────release───────┘  └─recover_lost───> failed ("worker lost")
        │             └──cancel_runs──> cancelled      (running: cancel_requested, worker stops)
        └─(foreground `train`: inserted `running` at once, see create_runs(runtime=...))
    delete_runs removes runs of any status.

`create_runs` is the one entry that creates runs: it validates every config
(gradscope.vocab.config),
makes relative CSV paths absolute (so a worker started in another folder trains the same file)
and inserts them in one transaction. The dashboard, `submit`, `train` and `sweep` all call it.
gradscope.db.epoch_writes.EpochWriter records what a running run measures (layers, epochs, runtime).

Every state change is guarded by the status it expects (`... WHERE status = 'queued'`) and checks
what it changed, so many workers on one database never train a run twice (Optuna's
WAITING -> RUNNING). Times come from the database's clock (`gradscope.db.clock.now_expr`), so
workers on
machines whose clocks disagree still agree on which heartbeat is stale.

SQLite: WAL and a busy timeout (gradscope.db.engine) make writers wait for each other; on top of
that every
write here retries a few times on "database is locked" (and PostgreSQL deadlocks), which the busy
handler cannot always absorb. PostgreSQL: candidates are locked `FOR UPDATE SKIP LOCKED`, so
concurrent claimers pass each other instead of queueing behind one row.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import Engine, and_, delete, func, insert, or_, select, update

from gradscope.db.clock import as_utc, now_expr
from gradscope.db.floats import to_db
from gradscope.db.models import (
    DecisionGridModel,
    EpochMetricModel,
    LayerStatModel,
    RunLayerModel,
    RunMetricModel,
    RunModel,
    RunPointsModel,
    RunTagModel,
    RunWarningModel,
)
from gradscope.db.transactions import transaction, with_retry
from gradscope.vocab.config import make_config, with_absolute_csv
from gradscope.vocab.fields import FINISHED_STATUSES
from gradscope.vocab.records import FinalMetrics, RunSpec
from gradscope.vocab.stored_values import stored_text
from gradscope.vocab.sweep import SweepPlan

WORKER_LOST = "worker lost"
# Losing a claim race just means another worker took that run; try the next one.
CLAIM_ATTEMPTS = 50

T = TypeVar("T")

_runs = RunModel.__table__
# Everything recorded for a run, children first (deleting needs no ON DELETE CASCADE).
# What training recorded for a run (a retry starts these afresh), and everything that hangs
# off a run (deleting a run takes it all; tags are people's, not training's).
_RECORDED = tuple(
    m.__table__
    for m in (
        LayerStatModel,
        EpochMetricModel,
        RunMetricModel,
        RunWarningModel,
        DecisionGridModel,
        RunPointsModel,
        RunLayerModel,
    )
)
_CHILDREN = (*_RECORDED, RunTagModel.__table__)


@dataclass(frozen=True)
class Claim:
    """Runs one worker now owns (status `running`): one run, or every queued member of a group
    (batched ensembles), in group order. `configs` are the stored config dicts."""

    run_ids: tuple[str, ...]
    group_id: str | None
    configs: tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class Beat:
    """What a heartbeat learned about one run."""

    cancel_requested: bool
    # False when the run is no longer ours to train (another worker marked it lost).
    owned: bool


@dataclass(frozen=True)
class QueueStatus:
    queued: int
    running: int
    # Workers holding a running run whose heartbeat is fresh: the ones known to be alive.
    live_workers: tuple[str, ...]


# -- time -------------------------------------------------------------------------------------


def db_now(engine: Engine) -> datetime:
    """The database's current time (aware, UTC)."""
    with transaction(engine) as s:
        value = s.execute(select(now_expr(engine.dialect.name))).scalar_one()
    if isinstance(value, str):  # SQLite hands back text in SQLAlchemy's DATETIME format
        value = datetime.fromisoformat(value)
    result = as_utc(value)
    assert result is not None
    return result


def _running_values(engine: Engine, worker: str) -> dict[str, Any]:
    now = now_expr(engine.dialect.name)
    return {
        "status": "running",
        "worker": worker,
        "started_at": now,
        "heartbeat_at": now,
        # Counted in the claim itself, so a retry limit holds however many workers race.
        "attempts": func.coalesce(RunModel.attempts, 0) + 1,
        # The claiming process trains the run: on a cluster this names the node.
        "hostname": socket.gethostname()[:200],
    }


# -- creating ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Runtime:
    """Who trains a run created `running` (the foreground path), written with the insert so the
    runs row is written once before epoch 1."""

    worker: str
    device: str
    torch_version: str


def new_id() -> str:
    return str(uuid.uuid4())


def create_runs(
    engine: Engine,
    specs: Sequence[RunSpec],
    *,
    status: str = "queued",
    runtime: Runtime | None = None,
) -> list[str]:
    """Validate, make CSV paths absolute, and insert runs in one transaction (all or nothing);
    returns their ids in order. Raises gradscope.vocab.config.ConfigError, before anything is
    written, when any config is invalid.

    `status` is "queued" for the queue; "running" for a run trained by its creator (pass
    `runtime`, which also stamps started/heartbeat times).
    """
    if status not in ("queued", "running"):
        raise ValueError(f"runs are created queued or running, not {status!r}")
    now = now_expr(engine.dialect.name)
    ids = [new_id() for _ in specs]
    rows = []
    for run_id, spec in zip(ids, specs, strict=True):
        cfg = with_absolute_csv(make_config(spec.config)).model_dump()
        row = {
            "id": run_id,
            "name": spec.name if spec.name is not None else cfg.get("name"),
            "status": status,
            "config": cfg,
            "arch": cfg["arch"],
            "dataset": cfg["dataset"],
            "depth": cfg["depth"],
            "width": cfg["width"],
            "seed": cfg["seed"],
            "sweep_id": spec.sweep_id,
            "sweep_name": spec.sweep_name,
            "group_id": spec.group_id,
            "group_index": spec.group_index,
            "epochs_total": cfg["epochs"],
            "epochs_done": 0,
            "cancel_requested": False,
            **spec.extra,
        }
        if runtime is not None:
            row.update(vars(runtime))
        rows.append(row)
    if not rows:
        return []
    # One shape for every row: executemany needs the same keys (extras may differ per spec).
    keys = {k for row in rows for k in row}
    rows = [{k: row.get(k) for k in keys} for row in rows]

    def action() -> None:
        with transaction(engine) as s:
            # The database's clock, read once: SQLite evaluates 'now' per inserted row, so a
            # batch's runs would differ by a millisecond and list out of their order.
            clock = s.execute(select(now)).scalar_one()
            created = as_utc(datetime.fromisoformat(clock) if isinstance(clock, str) else clock)
            stamps = {"created_at": created}
            if runtime is not None:
                stamps |= {"started_at": created, "heartbeat_at": created}
            # Creation order: runs created together share created_at, so `seq` (max + 1, ...)
            # keeps the order they were given in for tables, the queue and training. Not
            # unique: two concurrent creators may reuse numbers, but each batch stays ordered.
            first = s.execute(select(func.coalesce(func.max(_runs.c.seq), 0))).scalar_one() + 1
            for offset, row in enumerate(rows):
                row["seq"] = first + offset
            s.execute(insert(_runs).values(**stamps), rows)

    with_retry(action)
    return ids


def queue_sweep(engine: Engine, plan: SweepPlan) -> list[str]:
    """Queue every run of a planned sweep in one transaction; returns their ids in grid order."""
    return create_runs(engine, list(plan.specs))


# -- claiming ---------------------------------------------------------------------------------


def claim_next(engine: Engine, worker: str) -> Claim | None:
    """Claim the oldest queued run (in creation order) for `worker`, or None when the queue
    is empty. When that run belongs to a group, every queued member of the group is claimed in
    the same transaction and returned together."""
    for _ in range(CLAIM_ATTEMPTS):
        outcome = with_retry(lambda: _try_claim(engine, worker))
        if outcome is None:
            return None
        if outcome.run_ids:
            return outcome
        # Another worker claimed that run between our read and our guarded update.
    return None


def _try_claim(engine: Engine, worker: str) -> Claim | None:
    """One attempt: None = queue empty; a Claim with no runs = lost the race, try again."""
    candidate = (
        select(RunModel.id, RunModel.group_id)
        .where(RunModel.status == "queued")
        # Creation order (seq), not UUID order, for runs created together.
        .order_by(RunModel.created_at, RunModel.seq, RunModel.id)
        .limit(1)
        # PostgreSQL locks the row and skips rows other claimers hold; SQLite ignores this
        # (its writers are serialised, and the guarded update below decides).
        .with_for_update(skip_locked=True)
    )
    values = _running_values(engine, worker)
    with transaction(engine) as s:
        row = s.execute(candidate).first()
        if row is None:
            return None
        run_id, group_id = row
        if group_id is None:
            target = and_(RunModel.id == run_id, RunModel.status == "queued")
        else:
            if engine.dialect.name == "postgresql" and not s.scalar(
                # Row locks alone would let two claimers each lock a different member of one
                # group (SKIP LOCKED) and split it; one lock per group keeps a group whole.
                # The other claimer backs off and retries.
                select(func.pg_try_advisory_xact_lock(func.hashtextextended(group_id, 0)))
            ):
                return Claim((), group_id, ())
            target = and_(RunModel.group_id == group_id, RunModel.status == "queued")
        claimed = s.execute(
            update(RunModel)
            .where(target)
            .values(**values)
            .returning(RunModel.id, RunModel.config, RunModel.group_index)
        ).all()
    claimed.sort(key=lambda r: (r.group_index if r.group_index is not None else 0, r.id))
    return Claim(
        tuple(r.id for r in claimed),
        group_id,
        tuple(dict(r.config) for r in claimed),
    )


def release(engine: Engine, run_ids: Sequence[str], worker: str) -> list[str]:
    """Put claimed runs that never started training back in the queue (e.g. the rest of a
    group when the worker is asked to stop). Runs with recorded epochs are left alone."""
    ids = list(run_ids)
    if not ids:
        return []

    def action() -> list[str]:
        with transaction(engine) as s:
            return list(
                s.scalars(
                    update(RunModel)
                    .where(
                        RunModel.id.in_(ids),
                        RunModel.status == "running",
                        RunModel.worker == worker,
                        RunModel.epochs_done == 0,
                    )
                    .values(status="queued", worker=None, started_at=None, heartbeat_at=None)
                    .returning(RunModel.id)
                )
            )

    return with_retry(action)


# -- heartbeats and staleness -----------------------------------------------------------------


def heartbeat(engine: Engine, run_ids: Sequence[str], worker: str) -> dict[str, Beat]:
    """Touch the heartbeat of `worker`'s running runs; say, per run, whether cancellation was
    requested and whether the run is still this worker's (it is not once marked lost)."""
    ids = list(run_ids)
    if not ids:
        return {}

    def action() -> dict[str, bool]:
        with transaction(engine) as s:
            rows = s.execute(
                update(RunModel)
                .where(
                    RunModel.id.in_(ids),
                    RunModel.status == "running",
                    RunModel.worker == worker,
                )
                .values(heartbeat_at=now_expr(engine.dialect.name))
                .returning(RunModel.id, RunModel.cancel_requested)
            ).all()
        return {r.id: bool(r.cancel_requested) for r in rows}

    touched = with_retry(action)
    return {
        run_id: Beat(cancel_requested=touched.get(run_id, False), owned=run_id in touched)
        for run_id in ids
    }


def recover_lost(
    engine: Engine,
    stale_after_s: float,
    now: datetime | None = None,
    *,
    spare_worker: str | None = None,
    retries: int = 0,
    dead_workers: Sequence[str] = (),
) -> dict[str, str]:
    """Recover running runs whose heartbeat is older than `stale_after_s` seconds (their worker
    died, or stalled). A run claimed at most `retries` times is queued again for another attempt,
    with its partial epochs, layer stats, grids, layers and points deleted in the same
    transaction (so the retry's epochs are not duplicated); any other is marked `failed` with the
    error "worker lost", its recorded epochs kept. `now` defaults to the database's clock (tests
    pass a later time instead of sleeping). A worker passes its own name as `spare_worker`: it
    knows its own runs are alive. Returns {run id: "queued" or "failed"}; a worker still alive
    learns of it at its next heartbeat (gradscope.runner.heartbeat) and stops. Runs of
    `dead_workers` (processes known to be gone) are recovered now, stale or not."""
    current = as_utc(now) if now is not None else db_now(engine)
    assert current is not None
    threshold = current - timedelta(seconds=stale_after_s)
    stale = and_(
        RunModel.status == "running",
        or_(RunModel.heartbeat_at < threshold, RunModel.worker.in_(list(dead_workers))),
    )
    if spare_worker is not None:
        stale = and_(stale, RunModel.worker.is_distinct_from(spare_worker))
    # A run whose cancel was requested is not worth another attempt; nor is one never claimed
    # from the queue (attempts 0: `gradscope train` in the foreground, whose user saw it die).
    again = and_(
        stale,
        func.coalesce(RunModel.attempts, 0).between(1, retries),
        RunModel.cancel_requested.is_not(True),
    )

    def action() -> dict[str, str]:
        with transaction(engine) as s:
            # Guarded like every change here: only runs still running with a stale heartbeat
            # move, so two recoverers never both requeue (or requeue and fail) one run.
            queued = list(
                s.scalars(
                    update(RunModel)
                    .where(again)
                    .values(
                        status="queued",
                        worker=None,
                        hostname=None,
                        started_at=None,
                        heartbeat_at=None,
                        epochs_done=0,
                        device=None,
                        torch_version=None,
                    )
                    .returning(RunModel.id)
                )
            )
            if queued:
                for table in _RECORDED:
                    s.execute(delete(table).where(table.c.run_id.in_(queued)))
            failed = list(
                s.scalars(
                    update(RunModel)
                    .where(stale)
                    .values(
                        status="failed",
                        error=WORKER_LOST,
                        finished_at=now_expr(engine.dialect.name),
                    )
                    .returning(RunModel.id)
                )
            )
        return {**dict.fromkeys(queued, "queued"), **dict.fromkeys(failed, "failed")}

    return with_retry(action)


def running_workers(engine: Engine) -> set[str]:
    """The workers holding running runs (to tell which of them are gone)."""
    with transaction(engine) as s:
        stmt = select(RunModel.worker).where(RunModel.status == "running").distinct()
        return {w for w in s.scalars(stmt) if w}


def queued_demand(engine: Engine) -> int:
    """How many workers the queue could keep busy now: queued solo runs, plus one per group
    with queued members (a group is trained by one worker)."""
    with transaction(engine) as s:
        return int(
            s.scalar(
                select(
                    func.count(func.distinct(func.coalesce(RunModel.group_id, RunModel.id)))
                ).where(RunModel.status == "queued")
            )
            or 0
        )


# -- cancelling -------------------------------------------------------------------------------


def cancel_runs(engine: Engine, run_ids: Sequence[str]) -> dict[str, str]:
    """Cancel runs: queued ones become `cancelled` at once; running ones get `cancel_requested`
    and their worker stops them. Returns, per id, "cancelled", "cancel requested", "already "
    and the finished status it had ("already completed", "already cancelled", ...), or
    "not found"."""
    ids = list(dict.fromkeys(run_ids))
    if not ids:
        return {}

    def action() -> dict[str, str]:
        with transaction(engine) as s:
            # Queued first, in one transaction: a run claimed in between is then running and
            # gets the request instead, so no run slips through.
            outcome = {
                run_id: "cancelled"
                for run_id in s.scalars(
                    update(RunModel)
                    .where(RunModel.id.in_(ids), RunModel.status == "queued")
                    .values(status="cancelled", finished_at=now_expr(engine.dialect.name))
                    .returning(RunModel.id)
                )
            }
            for run_id in s.scalars(
                update(RunModel)
                .where(RunModel.id.in_(ids), RunModel.status == "running")
                .values(cancel_requested=True)
                .returning(RunModel.id)
            ):
                outcome[run_id] = "cancel requested"
            rest = [i for i in ids if i not in outcome]
            if rest:
                for run_id, status in s.execute(
                    select(RunModel.id, RunModel.status).where(RunModel.id.in_(rest))
                ):
                    outcome[run_id] = f"already {status}"
        return {run_id: outcome.get(run_id, "not found") for run_id in ids}

    return with_retry(action)


# -- finishing --------------------------------------------------------------------------------


def finish_run(
    engine: Engine,
    run_id: str,
    status: str,
    *,
    final: FinalMetrics | None = None,
    error: str | None = None,
    only_if_running: bool = True,
    worker: str | None = None,
) -> bool:
    """Move a run to a finished status. Returns False when it was no longer running
    (e.g. another worker already marked it lost), so nothing is overwritten. With `worker`,
    only while that worker still holds the run (a lost run may have been queued again)."""
    if status not in FINISHED_STATUSES:
        raise ValueError(f"{status!r} is not a finished status")
    final = final or FinalMetrics()
    stmt = (
        update(_runs)
        .where(_runs.c.id == run_id)
        .values(
            status=status,
            finished_at=now_expr(engine.dialect.name),
            # The one place a run's error is written: controls (ESC, bidi, NUL, which
            # PostgreSQL refuses in text) escaped alike on both backends, cut to 10,000.
            error=stored_text(error),
            final_train_loss=to_db(final.train_loss),
            final_train_acc=to_db(final.train_acc),
            final_test_loss=to_db(final.test_loss),
            final_test_acc=to_db(final.test_acc),
            final_pred_std=to_db(final.pred_std),
        )
    )
    if only_if_running:
        stmt = stmt.where(_runs.c.status == "running")
    if worker is not None:
        stmt = stmt.where(_runs.c.worker == worker)

    def action() -> bool:
        with transaction(engine) as s:
            return s.execute(stmt).rowcount == 1

    return with_retry(action)


# -- deleting ---------------------------------------------------------------------------------


def delete_runs(engine: Engine, run_ids: Sequence[str]) -> int:
    """Delete runs and everything recorded for them (children first: no FK needed)."""
    ids = list(run_ids)
    if not ids:
        return 0

    def action() -> int:
        with transaction(engine) as s:
            for table in _CHILDREN:
                s.execute(delete(table).where(table.c.run_id.in_(ids)))
            return s.execute(delete(_runs).where(_runs.c.id.in_(ids))).rowcount

    return with_retry(action)


# -- status -----------------------------------------------------------------------------------


def queue_status(engine: Engine, fresh_within_s: float = 30.0) -> QueueStatus:
    """How many runs wait and run, and which workers show a fresh heartbeat. (An idle worker
    holds no run, so it is only visible to whoever started it, e.g. as a live process.)"""
    threshold = db_now(engine) - timedelta(seconds=fresh_within_s)
    with transaction(engine) as s:
        counts = dict(
            s.execute(
                select(RunModel.status, func.count())
                .where(RunModel.status.in_(("queued", "running")))
                .group_by(RunModel.status)
            ).all()
        )
        workers = s.scalars(
            select(RunModel.worker)
            .where(
                RunModel.status == "running",
                RunModel.heartbeat_at >= threshold,
                RunModel.worker.is_not(None),
            )
            .distinct()
            .order_by(RunModel.worker)
        ).all()
    return QueueStatus(counts.get("queued", 0), counts.get("running", 0), tuple(workers))
