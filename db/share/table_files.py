"""The chosen runs' tables as CSV or Parquet files, for people who analyse runs in pandas.

Four tables: `runs` (one row per run, config as JSON text), `epochs` (per run and epoch, with
first_nonfinite_step), `layers` (per run, epoch and layer, with the divergence-moment
statistics and the layer's kind, activation, name and shape joined in) and `metrics` (the free
metrics a run logged with `run.log`: per run, name, step and epoch, in logging order).
Gradient histograms, decision grids and test points stay in the `.db` export. NaN is NaN (an
empty cell in CSV), infinities are `inf`/`-inf`; Parquet keeps every float exactly.
"""

from __future__ import annotations

import io
import json
import os
import uuid
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pandas as pd
from sqlalchemy import Engine, select

from gradscope.db.clock import as_utc
from gradscope.db.models import (
    EpochMetricModel,
    LayerStatModel,
    RunLayerModel,
    RunMetricModel,
    RunModel,
)
from gradscope.db.share.base import ShareError, chunks
from gradscope.db.transactions import orm, transaction
from gradscope.vocab.fields import EPOCH_COLUMNS, FINAL_COLUMNS, RUN_COLUMNS, STAT_COLUMNS

TableFormat = Literal["csv", "parquet"]
TABLE_NAMES = ("runs", "epochs", "layers", "metrics")
METRIC_COLUMNS = ("run_id", "name", "step", "epoch", "value")
RUN_TIMES = tuple(c for c in RUN_COLUMNS if c.endswith("_at"))
# Joined into the layer statistics; a user's model (gradscope API) has a module path and a
# weight shape per layer.
LAYER_COLUMNS = ("kind", "activation", "layer_name", "shape")


def _floats(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """NULL becomes NaN even in a column with no numbers at all (pandas would keep None)."""
    for column in columns:
        frame[column] = pd.to_numeric(frame[column], errors="coerce").astype("float64")
    return frame


def run_tables(engine: Engine, run_ids: Sequence[str]) -> dict[str, pd.DataFrame]:
    """DataFrames `runs`, `epochs`, `layers`, `metrics` for the given runs (full ids), sorted."""
    runs, epochs, layers, metrics = [], [], [], []
    metric_cols = [getattr(RunMetricModel, c) for c in METRIC_COLUMNS]
    run_cols = [getattr(RunModel, c) for c in RUN_COLUMNS]
    epoch_cols = [getattr(EpochMetricModel, c) for c in ("run_id", "epoch", *EPOCH_COLUMNS)]
    stat_keys = ("run_id", "epoch", "layer")
    stat_cols = [getattr(LayerStatModel, c) for c in (*stat_keys, *STAT_COLUMNS)]
    layer = (RunLayerModel.kind, RunLayerModel.activation, RunLayerModel.name, RunLayerModel.shape)
    with transaction(engine) as conn, orm(conn) as s:
        for chunk in chunks(list(dict.fromkeys(run_ids))):
            for row in s.execute(
                select(*run_cols, RunModel.config).where(RunModel.id.in_(chunk))
            ).all():
                record = dict(zip(RUN_COLUMNS, row[:-1], strict=True))
                record["config"] = json.dumps(row[-1], sort_keys=True)
                runs.append(record)
            epochs += s.execute(select(*epoch_cols).where(EpochMetricModel.run_id.in_(chunk))).all()
            layers += s.execute(
                select(*stat_cols, *layer)
                .outerjoin(
                    RunLayerModel,
                    (RunLayerModel.run_id == LayerStatModel.run_id)
                    & (RunLayerModel.layer == LayerStatModel.layer),
                )
                .where(LayerStatModel.run_id.in_(chunk))
            ).all()
            metrics += s.execute(
                select(*metric_cols)
                .where(RunMetricModel.run_id.in_(chunk))
                .order_by(RunMetricModel.run_id, RunMetricModel.id)
            ).all()
    run_frame = pd.DataFrame(runs, columns=[*RUN_COLUMNS, "config"])
    for column in RUN_TIMES:
        run_frame[column] = pd.to_datetime(
            [as_utc(v) for v in run_frame[column]], utc=True, errors="coerce"
        )
    run_frame = _floats(run_frame, FINAL_COLUMNS).sort_values(["created_at", "id"])
    run_frame["seed"] = run_frame["seed"].astype("Int64")  # NULL: an API run given no seed
    names = dict(zip(run_frame["id"], run_frame["name"], strict=True))
    epoch_frame = pd.DataFrame(epochs, columns=["run_id", "epoch", *EPOCH_COLUMNS])
    # first_nonfinite_step goes through float too: an integer column cannot hold the NaNs.
    epoch_frame = _floats(epoch_frame, EPOCH_COLUMNS).sort_values(["run_id", "epoch"])
    layer_frame = pd.DataFrame(layers, columns=[*stat_keys, *STAT_COLUMNS, *LAYER_COLUMNS])
    layer_frame = _floats(layer_frame, STAT_COLUMNS).sort_values(["run_id", "epoch", "layer"])
    metric_frame = pd.DataFrame(metrics, columns=list(METRIC_COLUMNS))
    metric_frame = _floats(metric_frame, ["value"])
    for column in ("step", "epoch"):  # nullable integers: NULL stays missing, not a float
        metric_frame[column] = metric_frame[column].astype("Int64")
    for frame in (epoch_frame, layer_frame, metric_frame):
        frame.insert(1, "run_name", frame["run_id"].map(names))
    return {
        "runs": run_frame.reset_index(drop=True),
        "epochs": epoch_frame.reset_index(drop=True),
        "layers": layer_frame.reset_index(drop=True),
        "metrics": metric_frame.reset_index(drop=True),
    }


def _table_bytes(frame: pd.DataFrame, fmt: TableFormat) -> bytes:
    if fmt == "csv":
        return frame.to_csv(index=False).encode()
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def _check_request(run_ids: Sequence[str], fmt: str) -> None:
    if fmt not in ("csv", "parquet"):
        raise ShareError(f"unknown format {fmt!r}; use csv or parquet")
    if not run_ids:
        raise ShareError("no runs to export")


def export_tables(
    engine: Engine,
    run_ids: Sequence[str],
    out_dir: str | Path,
    fmt: TableFormat = "csv",
    *,
    force: bool = False,
) -> list[Path]:
    """Write runs/epochs/layers/metrics.{csv|parquet} into `out_dir` (made if missing); returns the
    paths. Refuses to replace existing files unless `force`; each file appears whole or not
    at all (written under a temporary name, then renamed)."""
    _check_request(run_ids, fmt)
    out = Path(out_dir).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise ShareError(f"{out} is a file; give a folder")
    paths = [out / f"{name}.{fmt}" for name in TABLE_NAMES]
    existing = [p.name for p in paths if p.exists()]
    if existing and not force:
        raise ShareError(f"{out} already has {', '.join(existing)}; pass --force to replace")
    tables = run_tables(engine, run_ids)
    out.mkdir(parents=True, exist_ok=True)
    for name, path in zip(TABLE_NAMES, paths, strict=True):
        # A fresh name opened exclusively, not mkstemp's file: that one is 0600, and these are
        # files to hand on, so they get the usual mode (0666 less the umask), as export_runs's.
        tmp = out / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            with tmp.open("xb") as f:
                f.write(_table_bytes(tables[name], fmt))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    return paths


def export_tables_zip(engine: Engine, run_ids: Sequence[str], fmt: TableFormat = "csv") -> bytes:
    """A zip (in memory) holding runs/epochs/layers/metrics.{csv|parquet}, for a download button."""
    _check_request(run_ids, fmt)
    tables = run_tables(engine, run_ids)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in TABLE_NAMES:
            archive.writestr(f"{name}.{fmt}", _table_bytes(tables[name], fmt))
    return buffer.getvalue()
