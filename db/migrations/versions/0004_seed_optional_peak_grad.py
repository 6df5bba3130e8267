"""a run without a seed, and each run's peak gradient

Revision ID: 0004_seed_optional_peak_grad
Revises: 0003_metrics_warnings
Create Date: 2026-12-06

`runs.seed` may be NULL: a run recorded with the API whose config gave no integer seed was
stored as seed 0, which every listing showed as if it were one; such runs (arch "custom", seed
0, no integer "seed" in the user's config) become NULL. `runs.peak_grad` keeps the largest
gradient statistic (grad_norm, grad_max_abs, finite_max_abs; inf counts) of any recorded epoch,
so the runs table's badge sees a spike in a middle epoch as the full diagnosis does; it is
filled here from the layer statistics already recorded.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_seed_optional_peak_grad"
down_revision: str | None = "0003_metrics_warnings"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies (a migration must not follow later code): the columns of 0004's peak.
_PEAK_FIELDS = ("grad_norm", "grad_max_abs", "finite_max_abs")
_CHUNK = 500


def _seeded(config: object) -> bool:
    """gradscope.api.run.init's rule: the user's "seed", when an integer, is the run's seed."""
    user = config.get("user") if isinstance(config, dict) else None
    seed = user.get("seed") if isinstance(user, dict) else None
    return type(seed) is int and abs(seed) < 2**31


def upgrade() -> None:
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.alter_column("seed", existing_type=sa.Integer(), nullable=True)
        batch_op.add_column(sa.Column("peak_grad", sa.Float(), nullable=True))
    conn = op.get_bind()
    runs = sa.table(
        "runs",
        sa.column("id", sa.String()),
        sa.column("arch", sa.String()),
        sa.column("seed", sa.Integer()),
        sa.column("config", sa.JSON()),
        sa.column("peak_grad", sa.Float()),
    )
    found = conn.execute(
        sa.select(runs.c.id, runs.c.config).where(runs.c.arch == "custom", runs.c.seed == 0)
    ).all()
    unseeded = [run_id for run_id, config in found if not _seeded(config)]
    for i in range(0, len(unseeded), _CHUNK):
        chunk = unseeded[i : i + _CHUNK]
        conn.execute(sa.update(runs).where(runs.c.id.in_(chunk)).values(seed=None))

    stats = sa.table("layer_stats", sa.column("run_id"), *[sa.column(f) for f in _PEAK_FIELDS])
    maxima = [sa.func.max(sa.func.abs(stats.c[f])) for f in _PEAK_FIELDS]
    rows = conn.execute(sa.select(stats.c.run_id, *maxima).group_by(stats.c.run_id)).all()
    peaks = [
        {"rid": run_id, "peak": max(v for v in values if v is not None)}
        for run_id, *values in rows
        if any(v is not None for v in values)
    ]
    if peaks:
        conn.execute(
            sa.update(runs)
            .where(runs.c.id == sa.bindparam("rid"))
            .values(peak_grad=sa.bindparam("peak")),
            peaks,
        )


def downgrade() -> None:
    conn = op.get_bind()
    runs = sa.table("runs", sa.column("seed", sa.Integer()))
    conn.execute(sa.update(runs).where(runs.c.seed.is_(None)).values(seed=0))
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("peak_grad")
        batch_op.alter_column("seed", existing_type=sa.Integer(), nullable=False)
