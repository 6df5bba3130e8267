"""notes, tags, creation order, attempts, hostname, layer shapes, the moment of divergence

Revision ID: 0002_notes_tags_retries
Revises: 0001_initial
Create Date: 2026-11-29

One step for the columns several features need: runs gain `seq` (creation order), `notes`,
`attempts` and `hostname`; a `run_tags` table; run_layers take longer names and kinds (a user's
module paths and types) and a `shape`; epochs and layer statistics keep what the finite steps
of a diverging epoch saw. Older runs simply lack the new values (NULL, attempts 0).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_notes_tags_retries"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("seq", sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column("notes", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), server_default="0", nullable=False))
        batch_op.add_column(sa.Column("hostname", sa.String(length=200), nullable=True))
        batch_op.create_index("ix_runs_created_seq", ["created_at", "seq"], unique=False)

    with op.batch_alter_table("run_layers", schema=None) as batch_op:
        batch_op.alter_column(
            "name",
            existing_type=sa.String(length=64),
            type_=sa.String(length=200),
            existing_nullable=False,
        )
        batch_op.alter_column(
            "kind",
            existing_type=sa.String(length=16),
            type_=sa.String(length=64),
            existing_nullable=False,
        )
        batch_op.add_column(sa.Column("shape", sa.String(length=200), nullable=True))

    with op.batch_alter_table("epoch_metrics", schema=None) as batch_op:
        batch_op.add_column(sa.Column("first_nonfinite_step", sa.Integer(), nullable=True))

    with op.batch_alter_table("layer_stats", schema=None) as batch_op:
        batch_op.add_column(sa.Column("finite_first_max_abs", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("finite_max_abs", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("finite_last_norm", sa.Float(), nullable=True))

    op.create_table(
        "run_tags",
        sa.Column("run_id", sa.String(length=36), nullable=False),
        sa.Column("tag", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"], ["runs.id"], name=op.f("fk_run_tags_run_id_runs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("run_id", "tag", name=op.f("pk_run_tags")),
    )
    with op.batch_alter_table("run_tags", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_tags_tag"), ["tag"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("run_tags", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_tags_tag"))
    op.drop_table("run_tags")
    with op.batch_alter_table("layer_stats", schema=None) as batch_op:
        batch_op.drop_column("finite_last_norm")
        batch_op.drop_column("finite_max_abs")
        batch_op.drop_column("finite_first_max_abs")
    with op.batch_alter_table("epoch_metrics", schema=None) as batch_op:
        batch_op.drop_column("first_nonfinite_step")
    with op.batch_alter_table("run_layers", schema=None) as batch_op:
        batch_op.drop_column("shape")
        batch_op.alter_column(
            "kind",
            existing_type=sa.String(length=64),
            type_=sa.String(length=16),
            existing_nullable=False,
        )
        batch_op.alter_column(
            "name",
            existing_type=sa.String(length=200),
            type_=sa.String(length=64),
            existing_nullable=False,
        )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_index("ix_runs_created_seq")
        batch_op.drop_column("hostname")
        batch_op.drop_column("attempts")
        batch_op.drop_column("notes")
        batch_op.drop_column("seq")
