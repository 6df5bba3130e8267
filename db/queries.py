"""Reads for the CLI and the runner: frozen dataclasses and plain dicts, never live ORM rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, or_, select

from db.clock import as_utc
from db.errors import NotFoundError, StorageError
from db.floats import from_db
from db.models import EpochMetricModel, LayerStatModel, RunLayerModel, RunModel
from db.session import session_scope
from vocab.fields import DIVERGENCE_LAYER_FIELDS, EPOCH_FIELDS, LAYER_STAT_FIELDS


@dataclass(frozen=True)
class RunSummary:
    id: str
    name: str | None
    status: str
    arch: str
    dataset: str
    depth: int
    width: int
    seed: int
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

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("created_at", "started_at", "finished_at", "heartbeat_at"):
            out[key] = out[key].isoformat() if out[key] else None
        out["test_acc"] = json_number(self.test_acc)
        return out


def json_number(value: float | None) -> float | None:
    """JSON has no NaN: it becomes null; infinities stay (Python's json writes Infinity)."""
    if value is None or value != value:
        return None
    return value


def _summary(row: RunModel) -> RunSummary:
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
    )


def list_runs(
    engine: Engine,
    statuses: Sequence[str] | None = None,
    limit: int | None = None,
    *,
    sweep: str | None = None,
    archs: Sequence[str] | None = None,
    name: str | None = None,
) -> list[RunSummary]:
    """Runs, newest first, optionally only those with the given statuses, of one sweep (its
    name or id), of the given archs, or whose name contains `name` (literally, any case)."""
    stmt = select(RunModel).order_by(RunModel.created_at.desc(), RunModel.id)
    if statuses:
        stmt = stmt.where(RunModel.status.in_(list(statuses)))
    if sweep:
        stmt = stmt.where(or_(RunModel.sweep_name == sweep, RunModel.sweep_id == sweep))
    if archs:
        stmt = stmt.where(RunModel.arch.in_(list(archs)))
    if name:
        stmt = stmt.where(RunModel.name.icontains(name, autoescape=True))
    if limit:
        stmt = stmt.limit(limit)
    with session_scope(engine) as s:
        return [_summary(r) for r in s.scalars(stmt)]


def resolve_run_id(engine: Engine, run_id: str) -> str:
    """A full run id from a unique prefix (at least 4 characters), as git does for commits."""
    with session_scope(engine) as s:
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
    with session_scope(engine) as s:
        row = s.get(RunModel, run_id)
        if row is None:
            raise NotFoundError(f"no run with id {run_id!r}")
        return _summary(row)


def run_document(engine: Engine, run_id: str) -> dict[str, Any]:
    """Everything recorded for a run as JSON-able data (NaN as null), epochs counting from 1."""
    summary = get_run(engine, run_id)
    with session_scope(engine) as s:
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
        stat_fields = (*LAYER_STAT_FIELDS, *DIVERGENCE_LAYER_FIELDS)
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
    return doc
