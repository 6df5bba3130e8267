"""SQLAlchemy 2.x typed models: the one description of gradscope's schema.

Non-finite numbers: SQLite silently turns NaN into NULL, PostgreSQL keeps it. gradscope decides
once, here and in `gradscope.db.floats`: NaN is stored as NULL on every backend and read back as
NaN;
+/-inf are stored as they are (both backends keep them). A NULL statistic therefore means
"not a number or not applicable" (e.g. `dead_frac` of a sigmoid layer).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from gradscope.vocab.fields import (
    MAX_METRIC_NAME_CHARS,
    MAX_NAME_CHARS,
    MAX_TAG_CHARS,
    RUN_STATUSES,
)

# Named constraints so Alembic migrations can refer to them on every backend.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_name)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _status_check() -> CheckConstraint:
    allowed = ", ".join(f"'{s}'" for s in RUN_STATUSES)
    return CheckConstraint(f"status IN ({allowed})", name="status_valid")


class RunModel(Base):
    """One training run: its config, lifecycle and final metrics."""

    __tablename__ = "runs"
    __table_args__ = (
        _status_check(),
        Index("ix_runs_status_created", "status", "created_at"),
        Index("ix_runs_created_seq", "created_at", "seq"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(MAX_NAME_CHARS))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Denormalised from config so the runs table filters and sorts without parsing JSON.
    arch: Mapped[str] = mapped_column(String(16))
    dataset: Mapped[str] = mapped_column(String(300))
    depth: Mapped[int] = mapped_column(Integer)
    width: Mapped[int] = mapped_column(Integer)
    # NULL (schema 0004): a run recorded with the API whose config gave no integer seed.
    seed: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sweep_id: Mapped[str | None] = mapped_column(String(36), index=True)
    sweep_name: Mapped[str | None] = mapped_column(String(MAX_NAME_CHARS))
    group_id: Mapped[str | None] = mapped_column(String(36), index=True)
    group_index: Mapped[int | None] = mapped_column(Integer)

    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    epochs_total: Mapped[int] = mapped_column(Integer)
    epochs_done: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    worker: Mapped[str | None] = mapped_column(String(200))
    error: Mapped[str | None] = mapped_column(Text)

    final_train_loss: Mapped[float | None] = mapped_column(Float)
    final_train_acc: Mapped[float | None] = mapped_column(Float)
    final_test_loss: Mapped[float | None] = mapped_column(Float)
    final_test_acc: Mapped[float | None] = mapped_column(Float)
    final_pred_std: Mapped[float | None] = mapped_column(Float)

    torch_version: Mapped[str | None] = mapped_column(String(64))
    device: Mapped[str | None] = mapped_column(String(64))
    # Where an imported run came from (None for runs made here).
    source_file: Mapped[str | None] = mapped_column(String(500))
    imported_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    # Schema 0002. Creation order: runs created together keep it (tables, queue, training).
    seq: Mapped[int | None] = mapped_column(BigInteger)
    notes: Mapped[str | None] = mapped_column(Text)
    # How many times the run has been claimed for training (a lost run may be queued again).
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The machine that trained it (the node, on a cluster); `worker` names the process.
    hostname: Mapped[str | None] = mapped_column(String(200))
    # Schema 0003. A cure trial's run (`gradscope cure`): the patient whose diagnosis it tests,
    # and the cure it tries ("control": the patient's configuration unchanged).
    cure_of: Mapped[str | None] = mapped_column(String(36), index=True)
    cure: Mapped[str | None] = mapped_column(String(64))
    # Schema 0004. The largest gradient statistic recorded in any epoch (PEAK_GRAD_FIELDS,
    # inf counts), kept as epochs are written: the runs table's badge reads it.
    peak_grad: Mapped[float | None] = mapped_column(Float)


class RunLayerModel(Base):
    """Each nn.Linear of a run's model, index 0 nearest the input, the output layer last."""

    __tablename__ = "run_layers"

    run_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    layer: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Built-in runs: the nn.Linear's name; a user's model (gradscope.init): the module path.
    name: Mapped[str] = mapped_column(String(200))
    # Built-in: input | hidden | block | output; a user's model: the module type (Conv2d, ...).
    kind: Mapped[str] = mapped_column(String(64))
    activation: Mapped[str] = mapped_column(String(16))  # sigmoid | relu | none
    fan_in: Mapped[int] = mapped_column(Integer)
    fan_out: Mapped[int] = mapped_column(Integer)
    n_params: Mapped[int] = mapped_column(Integer)
    # The weight's shape as JSON ("[32, 16]"); schema 0002, NULL for older runs.
    shape: Mapped[str | None] = mapped_column(String(200))


class EpochMetricModel(Base):
    """Per-epoch loss, accuracy and prediction spread of a run. Epochs count from 1."""

    __tablename__ = "epoch_metrics"

    run_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    train_loss: Mapped[float | None] = mapped_column(Float)
    train_acc: Mapped[float | None] = mapped_column(Float)
    test_loss: Mapped[float | None] = mapped_column(Float)
    test_acc: Mapped[float | None] = mapped_column(Float)
    pred_std: Mapped[float | None] = mapped_column(Float)
    seconds: Mapped[float | None] = mapped_column(Float)
    # Schema 0002: the step (1-based, within the epoch) whose loss or gradient first became
    # non-finite; NULL when every step was finite.
    first_nonfinite_step: Mapped[int | None] = mapped_column(Integer)


class LayerStatModel(Base):
    """Per-epoch, per-layer gradient, weight and activation statistics."""

    __tablename__ = "layer_stats"

    run_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    layer: Mapped[int] = mapped_column(Integer, primary_key=True)
    grad_norm: Mapped[float | None] = mapped_column(Float)
    grad_mean_abs: Mapped[float | None] = mapped_column(Float)
    grad_std: Mapped[float | None] = mapped_column(Float)
    grad_max_abs: Mapped[float | None] = mapped_column(Float)
    weight_norm: Mapped[float | None] = mapped_column(Float)
    update_ratio: Mapped[float | None] = mapped_column(Float)
    act_mean: Mapped[float | None] = mapped_column(Float)
    act_std: Mapped[float | None] = mapped_column(Float)
    saturated_frac: Mapped[float | None] = mapped_column(Float)
    dead_frac: Mapped[float | None] = mapped_column(Float)
    # int32 little-endian counts: HIST_BINS bins of log10|g|, then zeros, then non-finite.
    grad_hist: Mapped[bytes | None] = mapped_column(LargeBinary)
    # Schema 0002, set only for an epoch with a non-finite step: what the finite steps before
    # it saw (max |g| at the epoch's first step and over all finite steps, the last finite norm).
    finite_first_max_abs: Mapped[float | None] = mapped_column(Float)
    finite_max_abs: Mapped[float | None] = mapped_column(Float)
    finite_last_norm: Mapped[float | None] = mapped_column(Float)


class RunTagModel(Base):
    """A tag on a run (schema 0002); a run carries any number of distinct tags."""

    __tablename__ = "run_tags"

    run_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    tag: Mapped[str] = mapped_column(String(MAX_TAG_CHARS), primary_key=True, index=True)


class DecisionGridModel(Base):
    """Predicted probability on a fixed grid, for two-feature datasets, at a few epochs."""

    __tablename__ = "decision_grids"

    run_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(Integer)
    x_min: Mapped[float] = mapped_column(Float)
    x_max: Mapped[float] = mapped_column(Float)
    y_min: Mapped[float] = mapped_column(Float)
    y_max: Mapped[float] = mapped_column(Float)
    # float16 little-endian, row-major [size(y), size(x)].
    probs: Mapped[bytes] = mapped_column(LargeBinary)


class RunPointsModel(Base):
    """The test split of a two-feature run (x, y, label as float32), drawn over decision maps."""

    __tablename__ = "run_points"

    run_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    n: Mapped[int] = mapped_column(Integer)
    points: Mapped[bytes] = mapped_column(LargeBinary)


# SQLite autoincrements an INTEGER PRIMARY KEY only; PostgreSQL gets a bigint identity.
_ROW_ID = BigInteger().with_variant(Integer(), "sqlite")


class RunMetricModel(Base):
    """A named scalar a run logged (schema 0003): per step (`step`), per epoch (`epoch`), or
    both. NaN is stored as NULL, like every float here; +/-inf as they are."""

    __tablename__ = "run_metrics"
    __table_args__ = (Index("ix_run_metrics_run_name_step", "run_id", "name", "step"),)

    id: Mapped[int] = mapped_column(_ROW_ID, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(36), ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(MAX_METRIC_NAME_CHARS))
    step: Mapped[int | None] = mapped_column(BigInteger)
    epoch: Mapped[int | None] = mapped_column(Integer)
    value: Mapped[float | None] = mapped_column(Float)


class RunWarningModel(Base):
    """What a live check flagged while the run trained (schema 0003), e.g. a gradient spike:
    the step, the layer, the value against the layer's running level (`baseline`), the factor."""

    __tablename__ = "run_warnings"
    __table_args__ = (Index("ix_run_warnings_run_id", "run_id", "step"),)

    id: Mapped[int] = mapped_column(_ROW_ID, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(String(36), ForeignKey("runs.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(32))
    epoch: Mapped[int | None] = mapped_column(Integer)
    step: Mapped[int | None] = mapped_column(BigInteger)
    layer: Mapped[int | None] = mapped_column(Integer)
    value: Mapped[float | None] = mapped_column(Float)
    baseline: Mapped[float | None] = mapped_column(Float)
    factor: Mapped[float | None] = mapped_column(Float)
    message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
