"""Writes: create runs, record epochs (one transaction each), move runs between statuses."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from sqlalchemy import Engine, delete, insert, select, update

from db.clock import now_expr
from db.errors import NotFoundError
from db.floats import to_db
from db.models import (
    DecisionGridModel,
    EpochMetricModel,
    LayerStatModel,
    RunLayerModel,
    RunModel,
    RunPointsModel,
    RunTagModel,
)
from db.session import transaction
from vocab.fields import EPOCH_FIELDS, LAYER_STAT_FIELDS
from vocab.records import EpochRecord, FinalMetrics, LayerInfo, RunSpec
from vocab.sweep import SweepPlan

# Core tables: the store writes with Core statements (see db.session.transaction).
_runs = RunModel.__table__
_layers = RunLayerModel.__table__
_points = RunPointsModel.__table__
_epochs = EpochMetricModel.__table__
_layer_stats = LayerStatModel.__table__
_grids = DecisionGridModel.__table__
_tags = RunTagModel.__table__
_CHILDREN = (_layer_stats, _epochs, _grids, _points, _layers, _tags)


def new_id() -> str:
    return str(uuid.uuid4())


class RunStore:
    """The write side of the run database. Every method is one short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._now = now_expr(engine.dialect.name)

    # -- creating ---------------------------------------------------------------------------
    def create_runs(self, specs: Sequence[RunSpec], *, status: str = "queued") -> list[str]:
        """Insert runs in one transaction (all or nothing); returns their ids in order."""
        ids = [new_id() for _ in specs]
        rows = []
        for run_id, spec in zip(ids, specs, strict=True):
            cfg = spec.config
            rows.append(
                {
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
            )
        if not rows:
            return []
        with transaction(self.engine) as s:
            s.execute(insert(_runs).values(created_at=self._now), rows)
        return ids

    def create_run(self, spec: RunSpec, *, status: str = "queued") -> str:
        return self.create_runs([spec], status=status)[0]

    def mark_running(self, run_id: str, *, worker: str, device: str, torch_version: str) -> None:
        """Record that training of a run has begun (the foreground `train` path; the queue
        claims runs with its own guarded update)."""
        with transaction(self.engine) as s:
            s.execute(
                update(_runs)
                .where(_runs.c.id == run_id)
                .values(
                    status="running",
                    started_at=self._now,
                    heartbeat_at=self._now,
                    worker=worker,
                    device=device,
                    torch_version=torch_version,
                )
            )

    def set_runtime(self, run_id: str, *, device: str, torch_version: str) -> None:
        with transaction(self.engine) as s:
            s.execute(
                update(_runs)
                .where(_runs.c.id == run_id)
                .values(device=device, torch_version=torch_version)
            )

    def record_layers(
        self, run_id: str, layers: Sequence[LayerInfo], points: tuple[int, bytes] | None = None
    ) -> None:
        """The model's layers (and, for two-feature data, the test points), once per run."""
        with transaction(self.engine) as s:
            s.execute(delete(_layers).where(_layers.c.run_id == run_id))
            s.execute(insert(_layers), [{"run_id": run_id, **vars(li)} for li in layers])
            if points is not None:
                s.execute(delete(_points).where(_points.c.run_id == run_id))
                s.execute(
                    insert(_points),
                    [{"run_id": run_id, "n": points[0], "points": points[1]}],
                )

    # -- per epoch --------------------------------------------------------------------------
    def record_epoch(
        self, run_id: str, record: EpochRecord, *, epochs_total: int | None = None
    ) -> bool:
        """Write one epoch in one transaction and heartbeat the run. `epochs_total` (a run
        recorded with the gradscope API, whose length is the epochs logged so far) is set in
        the same update, so epochs_done <= epochs_total always holds.

        Returns True when cancellation of the run was requested meanwhile.
        """
        metrics = {k: to_db(record.metrics.get(k)) for k in EPOCH_FIELDS}
        progress: dict = {"epochs_done": record.epoch, "heartbeat_at": self._now}
        if epochs_total is not None:
            progress["epochs_total"] = epochs_total
        stats = []
        for layer, values in enumerate(record.layer_stats):
            row: dict = {"run_id": run_id, "epoch": record.epoch, "layer": layer}
            for k in LAYER_STAT_FIELDS:
                row[k] = to_db(values.get(k))  # type: ignore[arg-type]
            row["grad_hist"] = values.get("grad_hist")
            stats.append(row)
        with transaction(self.engine) as s:
            s.execute(insert(_epochs), [{"run_id": run_id, "epoch": record.epoch, **metrics}])
            if stats:
                s.execute(insert(_layer_stats), stats)
            if record.grid is not None:
                s.execute(
                    insert(_grids),
                    [{"run_id": run_id, "epoch": record.epoch, **vars(record.grid)}],
                )
            cancel = s.execute(
                update(_runs)
                .where(_runs.c.id == run_id)
                .values(**progress)
                .returning(_runs.c.cancel_requested)
            ).scalar_one_or_none()
        if cancel is None:
            raise NotFoundError(f"run {run_id} vanished from the database while training")
        return bool(cancel)

    def heartbeat(self, run_id: str) -> bool:
        """Touch the heartbeat; returns True when cancellation was requested."""
        with transaction(self.engine) as s:
            cancel = s.execute(
                update(_runs)
                .where(_runs.c.id == run_id)
                .values(heartbeat_at=self._now)
                .returning(_runs.c.cancel_requested)
            ).scalar_one_or_none()
        return bool(cancel)

    def cancel_requested(self, run_id: str) -> bool:
        return run_id in self.cancel_requests([run_id])

    def cancel_requests(self, run_ids: Sequence[str]) -> set[str]:
        """Which of these runs have a cancel request: one query for a whole group."""
        with transaction(self.engine) as s:
            return set(
                s.scalars(
                    select(_runs.c.id).where(
                        _runs.c.id.in_(list(run_ids)), _runs.c.cancel_requested.is_(True)
                    )
                )
            )

    # -- finishing --------------------------------------------------------------------------
    def finish_run(
        self,
        run_id: str,
        status: str,
        *,
        final: FinalMetrics | None = None,
        error: str | None = None,
        only_if_running: bool = True,
    ) -> bool:
        """Move a run to a finished status. Returns False when it was no longer running
        (e.g. another worker already marked it lost), so nothing is overwritten."""
        final = final or FinalMetrics()
        stmt = (
            update(_runs)
            .where(_runs.c.id == run_id)
            .values(
                status=status,
                finished_at=self._now,
                error=error[:10_000] if error else None,
                final_train_loss=to_db(final.train_loss),
                final_train_acc=to_db(final.train_acc),
                final_test_loss=to_db(final.test_loss),
                final_test_acc=to_db(final.test_acc),
                final_pred_std=to_db(final.pred_std),
            )
        )
        if only_if_running:
            stmt = stmt.where(_runs.c.status == "running")
        with transaction(self.engine) as s:
            return s.execute(stmt).rowcount == 1

    def delete_runs(self, run_ids: Sequence[str]) -> int:
        """Delete runs and everything recorded for them (children first: no FK needed)."""
        ids = list(run_ids)
        if not ids:
            return 0
        with transaction(self.engine) as s:
            for table in _CHILDREN:
                s.execute(delete(table).where(table.c.run_id.in_(ids)))
            return s.execute(delete(_runs).where(_runs.c.id.in_(ids))).rowcount


def queue_sweep(engine: Engine, plan: SweepPlan) -> list[str]:
    """Queue every run of a planned sweep in one transaction; returns their ids in grid order."""
    return RunStore(engine).create_runs(list(plan.specs))
