"""The recording writes of a running run: its layers, each epoch (one transaction each, which
also heartbeats the run), its runtime. Status changes (create, claim, finish, cancel, delete)
belong to gradscope.db.lifecycle; EpochWriter keeps one-line delegates for the ones trainers
call."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    Float,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)

from gradscope.db import lifecycle
from gradscope.db.clock import now_expr
from gradscope.db.errors import NotFoundError
from gradscope.db.floats import to_db
from gradscope.db.models import (
    DecisionGridModel,
    EpochMetricModel,
    LayerStatModel,
    RunLayerModel,
    RunMetricModel,
    RunModel,
    RunPointsModel,
)
from gradscope.db.transactions import transaction
from gradscope.vocab.fields import EPOCH_COLUMNS, EPOCH_FIELDS, STAT_COLUMNS
from gradscope.vocab.records import EpochRecord, FinalMetrics, LayerInfo, RunSpec
from gradscope.vocab.stored_values import check_metrics

# Core tables: the store writes with Core statements (see gradscope.db.transactions.transaction).
_runs = RunModel.__table__
_layers = RunLayerModel.__table__
_points = RunPointsModel.__table__
_epochs = EpochMetricModel.__table__
_layer_stats = LayerStatModel.__table__
_grids = DecisionGridModel.__table__
_metrics = RunMetricModel.__table__


class EpochWriter:
    """The write side of the run database. Every method is one short transaction."""

    def __init__(self, engine: Engine, *, worker: str | None = None) -> None:
        self.engine = engine
        self._now = now_expr(engine.dialect.name)
        # A queue worker's name: its epochs and final status are then written only while the
        # run is still running under that name. A lost run may be queued again and claimed by
        # another worker; a stale-but-alive first worker must not write into that attempt.
        self.worker = worker

    def _ours(self, table_id: Any, status: Any, worker: Any) -> Any:
        """The row guard for this store's writes to one run (just the id without a worker)."""
        if self.worker is None:
            return table_id
        return and_(table_id, status == "running", worker == self.worker)

    # -- status changes: gradscope.db.lifecycle owns them
    # ----------------------------------------------
    def create_runs(self, specs: Sequence[RunSpec], *, status: str = "queued") -> list[str]:
        return lifecycle.create_runs(self.engine, specs, status=status)

    def create_run(self, spec: RunSpec, *, status: str = "queued") -> str:
        return self.create_runs([spec], status=status)[0]

    def finish_run(
        self,
        run_id: str,
        status: str,
        *,
        final: FinalMetrics | None = None,
        error: str | None = None,
        only_if_running: bool = True,
    ) -> bool:
        return lifecycle.finish_run(
            self.engine,
            run_id,
            status,
            final=final,
            error=error,
            only_if_running=only_if_running,
            worker=self.worker,
        )

    def delete_runs(self, run_ids: Sequence[str]) -> int:
        return lifecycle.delete_runs(self.engine, run_ids)

    # -- recording ----------------------------------------------------------------------------
    def set_runtime(self, run_id: str, *, device: str, torch_version: str) -> None:
        """Record where the run trains. Writes nothing when the row already says so (the
        foreground path inserts the run with its runtime)."""
        with transaction(self.engine) as s:
            s.execute(
                update(_runs)
                .where(
                    _runs.c.id == run_id,
                    or_(
                        _runs.c.device.is_distinct_from(device),
                        _runs.c.torch_version.is_distinct_from(torch_version),
                    ),
                )
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
        progress: dict = {"epochs_done": record.epoch, "heartbeat_at": self._now}
        if epochs_total is not None:
            progress["epochs_total"] = epochs_total
        peak = record.peak_grad
        if peak is not None:  # the run's peak gradient, raised in the same update
            progress["peak_grad"] = _PEAK_RAISED
        epoch_row, stats, grid_row = _epoch_rows(run_id, record)
        with transaction(self.engine) as s:
            # The run's row first: when it is gone (or no longer ours) nothing is written.
            cancel = s.execute(
                update(_runs)
                .where(self._ours(_runs.c.id == run_id, _runs.c.status, _runs.c.worker))
                .values(**progress)
                .returning(_runs.c.cancel_requested),
                {"epoch_peak": peak} if peak is not None else {},
            ).scalar_one_or_none()
            if cancel is None:
                raise NotFoundError(self._gone(run_id))
            _insert_rows(s, _epochs, _EPOCH_INSERT, [epoch_row])
            if stats:
                _insert_rows(s, _layer_stats, _STAT_INSERT, stats)
            if grid_row is not None:
                s.execute(insert(_grids), [grid_row])
        return bool(cancel)

    def record_epochs(self, items: Sequence[tuple[str, EpochRecord]]) -> list[bool | NotFoundError]:
        """Several runs' epochs (a batched group's members at one epoch end) in ONE
        transaction: what `record_epoch` does for each, with one heartbeat update per distinct
        epoch number and one multi-row insert per table instead of a transaction per run (a
        member's write was ~20% of a group's time). Returns, per item in order, True when
        cancellation of that run was requested, or the NotFoundError `record_epoch` would have
        raised for a run that vanished or is no longer this worker's: nothing is written for
        that run, the others are written. A database error rolls back every item and raises.
        """
        if not items:
            return []
        by_epoch: dict[int, list[str]] = {}
        peaks: dict[int, dict[str, float]] = {}
        for run_id, record in items:
            by_epoch.setdefault(record.epoch, []).append(run_id)
            if (peak := record.peak_grad) is not None:
                peaks.setdefault(record.epoch, {})[run_id] = peak
        with transaction(self.engine) as s:
            cancels: dict[tuple[str, int], bool] = {}
            for epoch, run_ids in by_epoch.items():
                # The runs' rows first, as record_epoch: a run that is gone (or no longer ours)
                # returns no row and gets nothing written.
                returned = s.execute(
                    update(_runs)
                    .where(self._ours(_runs.c.id.in_(run_ids), _runs.c.status, _runs.c.worker))
                    .values(epochs_done=epoch, heartbeat_at=self._now)
                    .returning(_runs.c.id, _runs.c.cancel_requested)
                ).all()
                cancels.update(((run_id, epoch), bool(cancel)) for run_id, cancel in returned)
            epoch_rows, stat_rows, grid_rows = [], [], []
            out: list[bool | NotFoundError] = []
            for run_id, record in items:
                cancel = cancels.get((run_id, record.epoch))
                if cancel is None:
                    out.append(NotFoundError(self._gone(run_id)))
                    continue
                out.append(cancel)
                epoch_row, stats, grid_row = _epoch_rows(run_id, record)
                epoch_rows.append(epoch_row)
                stat_rows += stats
                if grid_row is not None:
                    grid_rows.append(grid_row)
            raised = [
                {"peak_id": run_id, "epoch_peak": peak}
                for epoch, by_run in peaks.items()
                for run_id, peak in by_run.items()
                if (run_id, epoch) in cancels  # written for this run
            ]
            if raised:  # one executemany of one cached statement for the whole group
                s.execute(_PEAK_UPDATE, raised)
            if epoch_rows:
                _insert_rows(s, _epochs, _EPOCH_INSERT, epoch_rows)
            if stat_rows:
                _insert_rows(s, _layer_stats, _STAT_INSERT, stat_rows)
            if grid_rows:
                s.execute(insert(_grids), grid_rows)
        return out

    def record_metrics(self, run_id: str, rows: Sequence[tuple]) -> None:
        """Free metrics (`run.log`): rows (name, step, epoch, value), NaN stored as NULL, in one
        transaction that also heartbeats the run; nothing is written once the run is no longer
        ours (raises NotFoundError then, as record_epoch)."""
        if not rows:
            return
        with transaction(self.engine) as s:
            alive = s.execute(
                update(_runs)
                .where(self._ours(_runs.c.id == run_id, _runs.c.status, _runs.c.worker))
                .values(heartbeat_at=self._now)
                .returning(_runs.c.id)
            ).scalar_one_or_none()
            if alive is None:
                raise NotFoundError(self._gone(run_id))
            values = [(run_id, n, step, epoch, to_db(v)) for n, step, epoch, v in rows]
            _insert_rows(s, _metrics, _METRIC_INSERT, values)

    def _gone(self, run_id: str) -> str:
        if self.worker is None:
            return f"run {run_id} vanished from the database while training"
        return f"run {run_id} is no longer this worker's (lost, perhaps queued again)"

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


# runs.peak_grad raised to the epoch's peak (bound as epoch_peak) where that is larger; made
# once: building the expression per write cost ~0.3 ms of CPU (with the GIL held) per epoch.
_EPOCH_PEAK = bindparam("epoch_peak", type_=Float)
_PEAK_RAISED = case(
    (func.coalesce(_runs.c.peak_grad, -1.0) < _EPOCH_PEAK, _EPOCH_PEAK),
    else_=_runs.c.peak_grad,
)
_PEAK_UPDATE = (
    update(_runs).where(_runs.c.id == bindparam("peak_id")).values(peak_grad=_PEAK_RAISED)
)


# The recording inserts' columns, in the order _epoch_rows gives their values.
_EPOCH_INSERT = ("run_id", "epoch", *EPOCH_COLUMNS)
_METRIC_INSERT = ("run_id", "name", "step", "epoch", "value")
_STAT_INSERT = ("run_id", "epoch", "layer", *STAT_COLUMNS, "grad_hist")
# A driver's paramstyle -> one placeholder (positional styles only).
_PLACEHOLDERS = {"qmark": "?", "format": "%s", "pyformat": "%s"}


def _insert_rows(conn: Connection, table: Table, columns: tuple[str, ...], rows: list) -> None:
    """Insert rows (tuples in `columns` order, values as the driver takes them: numbers, None,
    text, bytes) with the driver's executemany and one SQL string made once per table. Core's
    insert processes every row's parameters and compiles on a process's first epoch, all in
    Python, holding the GIL that a training thread waits for: an API run's epoch write (21
    layers) took 1.6 ms through Core and 1.4 ms here, its first one 5.8 ms and 2.1 ms. Other
    paramstyles take Core's insert."""
    style = conn.dialect.paramstyle
    if style not in _PLACEHOLDERS:
        conn.execute(insert(table), [dict(zip(columns, row, strict=True)) for row in rows])
        return
    conn.exec_driver_sql(_insert_sql(table.name, columns, _PLACEHOLDERS[style]), rows)


@functools.cache
def _insert_sql(table: str, columns: tuple[str, ...], placeholder: str) -> str:
    names = ", ".join(columns)
    return f"INSERT INTO {table} ({names}) VALUES ({', '.join([placeholder] * len(columns))})"


def _epoch_rows(run_id: str, record: EpochRecord) -> tuple[tuple, list[tuple], dict | None]:
    """One run's epoch as rows: epoch_metrics and layer_stats (one per layer) as tuples in
    _EPOCH_INSERT / _STAT_INSERT order, decision_grids as a dict."""
    # The ranges import checks (an accuracy in [0, 1], ...): refused here, not in a file later.
    check_metrics({k: record.metrics.get(k) for k in EPOCH_FIELDS})
    bad_step = record.metrics.get("first_nonfinite_step")
    epoch_row = (
        run_id,
        record.epoch,
        *[to_db(record.metrics.get(k)) for k in EPOCH_FIELDS],
        int(bad_step) if bad_step else None,
    )
    stats = [
        (
            run_id,
            record.epoch,
            layer,
            *[to_db(values.get(k)) for k in STAT_COLUMNS],  # type: ignore[arg-type]
            values.get("grad_hist"),
        )
        for layer, values in enumerate(record.layer_stats)
    ]
    grid = None
    if record.grid is not None:
        grid = {"run_id": run_id, "epoch": record.epoch, **vars(record.grid)}
    return epoch_row, stats, grid
