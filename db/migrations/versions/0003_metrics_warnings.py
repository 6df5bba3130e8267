"""free metrics and live warnings

Revision ID: 0003_metrics_warnings
Revises: 0002_notes_tags_retries
Create Date: 2026-12-06

Two long tables: `run_metrics` holds any named scalar a run logged (`run.log`), per step or per
epoch; `run_warnings` holds what the live checks flagged while a run trained (a gradient spike:
the step, the layer, the factor over the layer's running level), so a warning is seen before the
NaN. Older runs simply have no rows in either.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_metrics_warnings"
down_revision: str | None = "0002_notes_tags_retries"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")  # SQLite autoincrements INTEGER only


def upgrade() -> None:
    op.create_table(
        "run_metrics",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("step", sa.BigInteger(), nullable=True),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_metrics_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_metrics")),
    )
    op.create_index("ix_run_metrics_run_name_step", "run_metrics", ["run_id", "name", "step"])
    op.create_table(
        "run_warnings",
        sa.Column("id", _ID, autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=True),
        sa.Column("step", sa.BigInteger(), nullable=True),
        sa.Column("layer", sa.Integer(), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("baseline", sa.Float(), nullable=True),
        sa.Column("factor", sa.Float(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_warnings_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_run_warnings")),
    )
    op.create_index("ix_run_warnings_run_id", "run_warnings", ["run_id", "step"])
    # Cure trials (`gradscope cure`): each run of a cure sweep names its patient (the run whose
    # diagnosis it tests) and the cure it tries ("control" for the unchanged configuration).
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("cure_of", sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column("cure", sa.String(length=64), nullable=True))
        batch_op.create_index("ix_runs_cure_of", ["cure_of"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_cure_of")
        batch_op.drop_column("cure")
        batch_op.drop_column("cure_of")
    op.drop_index("ix_run_warnings_run_id", table_name="run_warnings")
    op.drop_table("run_warnings")
    op.drop_index("ix_run_metrics_run_name_step", table_name="run_metrics")
    op.drop_table("run_metrics")
