"""Reads for the CLI and the runner: frozen dataclasses and plain dicts, never live ORM rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, case, func, or_, select

from gradscope.db.clock import as_utc
from gradscope.db.errors import NotFoundError, StorageError
from gradscope.db.floats import from_db
from gradscope.db.models import (
    EpochMetricModel,
    LayerStatModel,
    RunLayerModel,
    RunMetricModel,
    RunModel,
    RunTagModel,
    RunWarningModel,
)
from gradscope.db.transactions import orm, transaction
from gradscope.vocab.custom import run_progress
from gradscope.vocab.fields import EPOCH_FIELDS, STAT_COLUMNS
from gradscope.vocab.metrics import metric_series


@dataclass(frozen=True)
class RunSummary:
    id: str
    name: str | None
    status: str
    arch: str
    dataset: str
    depth: int
    width: int
    seed: int | None  # None: an API run given no seed
    config: dict[str, Any]
    epochs_done: int
    epochs_total: int
    test_acc: float
    sweep_id: str | None
    sweep_name: str | None
    group_id: str | None
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    error: str | None
    device: str | None
    torch_version: str | None
    worker: str | None
    cancel_requested: bool
    attempts: int = 0  # times claimed by a worker (a lost run may be queued again)
    hostname: str | None = None  # the machine (node) that trained it
    notes: str | None = None
    tags: tuple[str, ...] = ()
    seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("created_at", "started_at", "finished_at", "heartbeat_at"):
            out[key] = out[key].isoformat() if out[key] else None
        out["test_acc"] = json_number(self.test_acc)
        out["tags"] = list(self.tags)
        # Share of its epochs done, null where not known (a custom run before its loop ended,
        # a run that did not complete): gradscope.vocab.custom.run_progress.
        share, _ = run_progress(self.arch, self.status, self.epochs_done, self.epochs_total)
        out["progress"] = share
        return out


def json_number(value: float | None) -> float | None:
    """JSON has no NaN: it becomes null; infinities stay (Python's json writes Infinity)."""
    if value is None or value != value:
        return None
    return value


def _summary(row: RunModel, tags: Sequence[str] = ()) -> RunSummary:
    return RunSummary(
        id=row.id,
        name=row.name,
        status=row.status,
        arch=row.arch,
        dataset=row.dataset,
        depth=row.depth,
        width=row.width,
        seed=row.seed,
        config=dict(row.config),
        epochs_done=row.epochs_done,
        epochs_total=row.epochs_total,
        test_acc=from_db(row.final_test_acc),
        sweep_id=row.sweep_id,
        sweep_name=row.sweep_name,
        group_id=row.group_id,
        created_at=as_utc(row.created_at),
        started_at=as_utc(row.started_at),
        finished_at=as_utc(row.finished_at),
        heartbeat_at=as_utc(row.heartbeat_at),
        error=row.error,
        device=row.device,
        torch_version=row.torch_version,
        worker=row.worker,
        cancel_requested=bool(row.cancel_requested),
        attempts=row.attempts or 0,
        hostname=row.hostname,
        notes=row.notes,
        tags=tuple(tags),
        seq=row.seq,
    )


# Creation order, oldest first: runs created together share created_at; `seq` keeps the order
# they were created in (NULL for runs older than schema 0002), the id breaks any tie.
CREATION_ORDER = (RunModel.created_at, RunModel.seq, RunModel.id)
# Lists: the latest batch of runs first, and the runs of a batch in the order they were created
# (`seq`), as the docs say. A batch is the runs created at one instant, or a whole sweep: a
# sweep queued in groups spans a few milliseconds and must not come out group by group.
_BATCH_CREATED = case(
    (RunModel.sweep_id.is_(None), RunModel.created_at),
    else_=func.min(RunModel.created_at).over(partition_by=RunModel.sweep_id),
)
NEWEST_FIRST = (_BATCH_CREATED.desc(), RunModel.seq, RunModel.id)


def _tags_by_run(s: Any, run_ids: Sequence[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for start in range(0, len(run_ids), 500):  # well under every backend's parameter limit
        chunk = list(run_ids[start : start + 500])
        stmt = (
            select(RunTagModel.run_id, RunTagModel.tag)
            .where(RunTagModel.run_id.in_(chunk))
            .order_by(RunTagModel.run_id, RunTagModel.tag)
        )
        for run_id, tag in s.execute(stmt):
            out.setdefault(run_id, []).append(tag)
    return out


def list_runs(
    engine: Engine,
    statuses: Sequence[str] | None = None,
    limit: int | None = None,
    *,
    sweep: str | None = None,
    archs: Sequence[str] | None = None,
    name: str | None = None,
    tags: Sequence[str] | None = None,
) -> list[RunSummary]:
    """Runs, newest first (runs created together in creation order), optionally only those with the
    given statuses, of one sweep (its name or id), of the given archs, whose name contains
    `name` (literally, any case), and carrying every one of `tags`."""
    stmt = select(RunModel).order_by(*NEWEST_FIRST)
    if statuses:
        stmt = stmt.where(RunModel.status.in_(list(statuses)))
    if sweep:
        stmt = stmt.where(or_(RunModel.sweep_name == sweep, RunModel.sweep_id == sweep))
    if archs:
        stmt = stmt.where(RunModel.arch.in_(list(archs)))
    if name:
        stmt = stmt.where(RunModel.name.icontains(name, autoescape=True))
    for tag in dict.fromkeys(tags or ()):
        tagged = select(RunTagModel.run_id).where(RunTagModel.tag == tag)
        stmt = stmt.where(RunModel.id.in_(tagged))
    if limit:
        stmt = stmt.limit(limit)
    with transaction(engine) as conn, orm(conn) as s:
        rows = list(s.scalars(stmt))
        found = _tags_by_run(s, [r.id for r in rows])
        return [_summary(r, found.get(r.id, ())) for r in rows]


@dataclass(frozen=True)
class FilterValues:
    """What the runs of a database hold for the list filters that take open values."""

    sweeps: tuple[tuple[str, str | None], ...]  # (sweep id, sweep name), newest first
    tags: tuple[str, ...]  # sorted


def filter_values(engine: Engine) -> FilterValues:
    """The sweeps and tags the runs carry, so a filter naming one that is not there can be
    refused by name instead of silently matching nothing."""
    with transaction(engine) as conn, orm(conn) as s:
        sweeps = s.execute(
            select(RunModel.sweep_id, RunModel.sweep_name)
            .where(RunModel.sweep_id.is_not(None))
            .group_by(RunModel.sweep_id, RunModel.sweep_name)
            .order_by(func.max(RunModel.created_at).desc())
        ).all()
        tags = s.scalars(select(RunTagModel.tag).distinct().order_by(RunTagModel.tag)).all()
    return FilterValues(tuple((i, n) for i, n in sweeps), tuple(tags))


def resolve_run_id(engine: Engine, run_id: str) -> str:
    """A full run id from a unique prefix (at least 4 characters), as git does for commits."""
    with transaction(engine) as conn, orm(conn) as s:
        if s.get(RunModel, run_id) is not None:
            return run_id
        if len(run_id) < 4:
            raise NotFoundError(f"no run {run_id!r} (give at least 4 characters of its id)")
        matches = s.scalars(
            select(RunModel.id).where(RunModel.id.startswith(run_id, autoescape=True)).limit(2)
        ).all()
    if not matches:
        raise NotFoundError(f"no run with id {run_id!r}")
    if len(matches) > 1:
        raise StorageError(f"run id prefix {run_id!r} is ambiguous; give more characters")
    return matches[0]


def get_run(engine: Engine, run_id: str) -> RunSummary:
    with transaction(engine) as conn, orm(conn) as s:
        row = s.get(RunModel, run_id)
        if row is None:
            raise NotFoundError(f"no run with id {run_id!r}")
        return _summary(row, _tags_by_run(s, [run_id]).get(run_id, ()))


def run_document(engine: Engine, run_id: str) -> dict[str, Any]:
    """Everything recorded for a run as JSON-able data (NaN as null), epochs counting from 1."""
    summary = get_run(engine, run_id)
    with transaction(engine) as conn, orm(conn) as s:
        epochs = (
            s.execute(
                select(EpochMetricModel)
                .where(EpochMetricModel.run_id == run_id)
                .order_by(EpochMetricModel.epoch)
            )
            .scalars()
            .all()
        )
        layers = (
            s.execute(
                select(RunLayerModel)
                .where(RunLayerModel.run_id == run_id)
                .order_by(RunLayerModel.layer)
            )
            .scalars()
            .all()
        )
        stat_fields = STAT_COLUMNS
        stats = s.execute(
            select(*[getattr(LayerStatModel, c) for c in ("epoch", "layer", *stat_fields)])
            .where(LayerStatModel.run_id == run_id)
            .order_by(LayerStatModel.epoch, LayerStatModel.layer)
        ).all()
        doc = summary.to_json()
        doc["epochs"] = [
            {
                "epoch": e.epoch,
                **{k: json_number(getattr(e, k)) for k in EPOCH_FIELDS},
                "first_nonfinite_step": e.first_nonfinite_step,
            }
            for e in epochs
        ]
        doc["layers"] = [
            {
                "index": la.layer,
                "name": la.name,
                "kind": la.kind,
                "activation": la.activation,
                "fan_in": la.fan_in,
                "fan_out": la.fan_out,
                "n_params": la.n_params,
            }
            for la in layers
        ]
        doc["layer_stats"] = [
            {
                "epoch": r[0],
                "layer": r[1],
                **{k: json_number(v) for k, v in zip(stat_fields, r[2:], strict=True)},
            }
            for r in stats
        ]
        m = RunMetricModel
        logged = s.execute(
            select(m.name, m.step, m.epoch, m.value)
            .where(m.run_id == run_id)
            .order_by(m.name, m.id)
        ).all()
        doc["metrics"] = metric_series([(r[0], r[1], r[2], json_number(r[3])) for r in logged])
        w = RunWarningModel
        cols = (w.kind, w.epoch, w.step, w.layer, w.value, w.baseline, w.factor, w.message)
        found = s.execute(select(*cols).where(w.run_id == run_id).order_by(w.id)).all()
        # The live warnings (a gradient spike before the NaN), in the order they were found.
        doc["warnings"] = [
            {
                c.key: json_number(v) if isinstance(v, float) else v
                for c, v in zip(cols, r, strict=True)
            }
            for r in found
        ]
    return doc
