"""Reads of a cure trial (gradscope.analysis.cures): a patient's latest cure sweep, and what its
runs recorded, as the frames the verdict reads. Runs of a trial name their patient in
`runs.cure_of` (indexed) and their cure in `runs.cure`."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
from sqlalchemy import Engine, select

from gradscope.db import frames
from gradscope.db.models import RunModel
from gradscope.db.transactions import transaction
from gradscope.db.warnings import warnings_of

_R = RunModel
TRIAL_COLUMNS = ("id", "status", "seed", "cure", "config", "error", "sweep_id", "sweep_name")


@dataclass(frozen=True)
class TrialFrames:
    """One cure sweep: its runs (TRIAL_COLUMNS, in creation order) and what they recorded."""

    sweep_id: str
    sweep_name: str
    runs: pd.DataFrame
    epochs: pd.DataFrame
    layers: pd.DataFrame
    warnings: pd.DataFrame


def cure_sweep_of(engine: Engine, patient_id: str) -> str | None:
    """The patient's latest cure sweep (a run may be tried more than once), or None."""
    stmt = (
        select(_R.sweep_id)
        .where(_R.cure_of == patient_id)
        .order_by(_R.created_at.desc(), _R.seq.desc())
        .limit(1)
    )
    with transaction(engine, "read the cure trial") as conn:
        return conn.execute(stmt).scalar_one_or_none()


def trial_frames(engine: Engine, patient_id: str) -> TrialFrames | None:
    """The patient's latest cure sweep and everything its runs recorded, or None."""
    sweep_id = cure_sweep_of(engine, patient_id)
    if sweep_id is None:
        return None
    cols = [getattr(_R, c) for c in TRIAL_COLUMNS]
    stmt = (
        select(*cols)
        .where(_R.sweep_id == sweep_id, _R.cure_of == patient_id)
        .order_by(_R.created_at, _R.seq)
    )
    with transaction(engine, "read the cure trial") as conn:
        rows = [tuple(r) for r in conn.execute(stmt)]
    runs = pd.DataFrame(rows, columns=list(TRIAL_COLUMNS))
    labels = {run_id: run_id for run_id in runs["id"]}
    return TrialFrames(
        sweep_id,
        str(runs["sweep_name"].iloc[0] or ""),
        runs,
        frames.epochs(engine, labels),
        frames.layer_stats(engine, labels),
        warnings_of(engine, list(labels)),
    )
