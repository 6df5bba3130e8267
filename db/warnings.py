"""The live warnings of a run (table run_warnings, schema 0003): written while it trains, read by
`gradscope show`, the dashboard and the diagnosis."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, case, func, insert, select

from gradscope.db.clock import now_expr
from gradscope.db.floats import to_db
from gradscope.db.models import RunWarningModel
from gradscope.db.transactions import transaction
from gradscope.vocab.warning_kinds import NONFINITE, SPIKE, TREND_WARNINGS

# The readers import pandas when called: a training process only stores warnings
# (gradscope.api.live) and never loads it (~90 MB of resident memory).
if TYPE_CHECKING:
    import pandas as pd

_warnings = RunWarningModel.__table__
WARNING_COLUMNS = ("kind", "epoch", "step", "layer", "value", "baseline", "factor", "message")


def add_warnings(engine: Engine, run_id: str, rows: Sequence[dict[str, Any]]) -> None:
    """Store a run's new warnings (dicts with WARNING_COLUMNS) in one transaction."""
    if not rows:
        return
    now = now_expr(engine.dialect.name)
    values = [
        {
            "run_id": run_id,
            **{
                k: to_db(r.get(k)) if k in ("value", "baseline", "factor") else r.get(k)
                for k in WARNING_COLUMNS
            },
        }
        for r in rows
    ]
    with transaction(engine, "store warnings") as conn:
        conn.execute(insert(_warnings).values(created_at=now), values)


def run_warnings(engine: Engine, run_id: str) -> pd.DataFrame:
    """A run's warnings in the order they were found (empty frame with the columns if none)."""
    import pandas as pd

    cols = [getattr(_warnings.c, k) for k in WARNING_COLUMNS]
    with transaction(engine, "read warnings") as conn:
        rows = conn.execute(
            select(*cols).where(_warnings.c.run_id == run_id).order_by(_warnings.c.id)
        ).all()
    return pd.DataFrame([tuple(r) for r in rows], columns=list(WARNING_COLUMNS))


def warnings_of(engine: Engine, run_ids: Sequence[str]) -> pd.DataFrame:
    """The warnings of these runs (run_id and WARNING_COLUMNS), each run's in the order found."""
    import pandas as pd

    cols = [_warnings.c.run_id, *[getattr(_warnings.c, k) for k in WARNING_COLUMNS]]
    ids = list(dict.fromkeys(run_ids))
    rows = []
    if ids:
        stmt = select(*cols).where(_warnings.c.run_id.in_(ids))
        with transaction(engine, "read warnings") as conn:
            rows = conn.execute(stmt.order_by(_warnings.c.run_id, _warnings.c.id)).all()
    frame = pd.DataFrame([tuple(r) for r in rows], columns=["run_id", *WARNING_COLUMNS])
    return frame.astype({k: "float64" for k in ("value", "baseline", "factor")})


def warning_summary(engine: Engine) -> pd.DataFrame:
    """Per run with warnings: how many (`warnings`), the largest spike factor (`spike_max`,
    NaN without a spike), the first spike or growth warning's step (`first_warned_step`) and
    the first non-finite one's (`nonfinite_step`; NaN without one), and the latest warning's
    kind, step, layer and factor (`last_*`).
    One grouped pass over run_warnings (at most spikes.MAX_WARNINGS rows per run)."""
    import pandas as pd

    w = _warnings.c
    spike = case((w.kind == SPIKE, w.factor))
    trend = case((w.kind.in_(TREND_WARNINGS), w.step))
    nonfinite = case((w.kind == NONFINITE, w.step))
    per_run = (
        select(
            w.run_id,
            func.count().label("n"),
            func.max(spike).label("spike_max"),
            func.min(trend).label("first_warned_step"),
            func.min(nonfinite).label("nonfinite_step"),
            func.max(w.id).label("last"),
        )
        .group_by(w.run_id)
        .subquery()
    )
    latest = _warnings.alias("latest")
    stmt = select(
        per_run.c.run_id,
        per_run.c.n,
        per_run.c.spike_max,
        per_run.c.first_warned_step,
        per_run.c.nonfinite_step,
        latest.c.kind,
        latest.c.step,
        latest.c.layer,
        latest.c.factor,
    ).join(latest, latest.c.id == per_run.c.last)
    with transaction(engine, "read warnings") as conn:
        rows = conn.execute(stmt).all()
    columns = ["run_id", "warnings", "spike_max", "first_warned_step", "nonfinite_step"]
    columns += ["last_kind", "last_step", "last_layer", "last_factor"]
    frame = pd.DataFrame([tuple(r) for r in rows], columns=columns)
    floats = ("spike_max", "first_warned_step", "nonfinite_step", "last_factor")
    return frame.astype(dict.fromkeys(floats, "float64"))
