"""Helpers for the share tests: runs with non-finite statistics, and database dumps to compare.

The dumps read tables straight from the schema (`Base.metadata`), not through gradscope.db.share,
so the
code under test does not check itself.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import Engine, MetaData, select

from gradscope.db.clock import as_utc
from gradscope.db.epoch_writes import EpochWriter
from gradscope.db.models import Base
from gradscope.vocab.config import make_config
from gradscope.vocab.fields import HIST_BINS
from gradscope.vocab.records import DecisionGrid, EpochRecord, FinalMetrics, LayerInfo, RunSpec

INF, NAN = math.inf, math.nan
# Set by import, so they differ between a source and its import by design.
IMPORT_COLUMNS = ("source_file", "imported_at")


def add_nonfinite_run(engine: Engine, name: str = "nonfinite", status: str = "diverged") -> str:
    """A small run whose statistics hold NaN, +inf and -inf everywhere they can, recorded
    through EpochWriter exactly as the trainer records a diverging run."""
    cfg = make_config({"arch": "relu", "depth": 2, "width": 4, "epochs": 3, "name": name})
    store = EpochWriter(engine)
    run_id = store.create_run(RunSpec(cfg.model_dump()), status="running")
    layers = [
        LayerInfo(0, "linears.0", "hidden", "relu", 2, 4, 12),
        LayerInfo(1, "linears.1", "hidden", "relu", 4, 4, 20),
        LayerInfo(2, "linears.2", "output", "sigmoid", 4, 1, 5),
    ]
    points = np.array([[0.5, -1.0, 1.0], [np.inf, np.nan, 0.0]], dtype="<f4")
    store.record_layers(run_id, layers, (len(points), points.tobytes()))
    hist = np.arange(HIST_BINS + 2, dtype="<i4")
    hist[-1] = 7  # non-finite gradient elements
    grid = np.array([np.nan, np.inf, -np.inf, 0.25] * 4, dtype="<f2").tobytes()
    for epoch in (1, 2):
        metrics = {
            "train_loss": INF,
            "train_acc": 0.5,
            "test_loss": NAN,
            "test_acc": 0.5,
            "pred_std": 0.0,
            "seconds": 1e-3 * epoch,
        }
        stats = [
            {
                "grad_norm": INF if layer == 0 else 1e-300,
                "grad_mean_abs": -INF,
                "grad_std": NAN,
                "grad_max_abs": 1.7976931348623157e308,
                "weight_norm": 5e-324,
                "update_ratio": 0.1 + layer / 3,
                "act_mean": NAN,
                "act_std": INF,
                "saturated_frac": None,
                "dead_frac": 0.25,
                "grad_hist": hist.tobytes() if layer else None,
            }
            for layer in range(3)
        ]
        record = EpochRecord(epoch, metrics, stats, DecisionGrid(4, -1.5, 1.5, -INF, 2.0, grid))
        store.record_epoch(run_id, record)
    store.finish_run(
        run_id, status, final=FinalMetrics(train_loss=INF, test_loss=NAN, test_acc=0.5)
    )
    return run_id


def _value(value: Any) -> Any:
    """Comparable across backends: floats by repr (inf/nan spelled), times in UTC."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, datetime):
        return as_utc(value).isoformat()
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, memoryview):
        return bytes(value)
    return value


def content(engine: Engine, skip: tuple[str, ...] = IMPORT_COLUMNS) -> dict[str, list[tuple]]:
    """Every gradscope table's rows (sorted), except the `skip` columns."""
    out: dict[str, list[tuple]] = {}
    with engine.connect() as conn:
        for name, table in Base.metadata.tables.items():
            cols = [c for c in table.columns if c.name not in skip]
            rows = conn.execute(select(*cols)).all()
            out[name] = sorted((tuple(_value(v) for v in r) for r in rows), key=repr)
    return out


def full_dump(engine: Engine) -> dict[str, list[tuple]]:
    """Every table in the database, whatever it is (alembic_version included), every column."""
    meta = MetaData()
    meta.reflect(engine)
    out: dict[str, list[tuple]] = {}
    with engine.connect() as conn:
        for name, table in meta.tables.items():
            rows = conn.execute(select(table)).all()
            out[name] = sorted((tuple(_value(v) for v in r) for r in rows), key=repr)
    return out


def make_big_export(path: str, runs: int, epochs: int = 50, depth: int = 8) -> int:
    """A valid run database of `runs` completed runs, each with `epochs` epochs and
    depth + 1 layers of statistics: one run recorded through EpochWriter, then cloned in SQL
    under fresh ids (seconds for millions of rows). Returns the number of rows written."""
    import sqlite3
    import uuid

    from gradscope.db.engine import make_engine

    cfg = make_config({"arch": "relu", "depth": depth, "width": 8, "epochs": epochs})
    engine = make_engine(path)
    store = EpochWriter(engine)
    template = store.create_run(RunSpec(cfg.model_dump()), status="running")
    layers = [
        LayerInfo(i, f"linears.{i}", "hidden" if i < depth else "output", "relu", 8, 8, 72)
        for i in range(depth + 1)
    ]
    store.record_layers(template, layers, None)
    hist = np.arange(HIST_BINS + 2, dtype="<i4").tobytes()
    for epoch in range(1, epochs + 1):
        metrics = dict.fromkeys(("train_loss", "test_loss", "pred_std"), 0.5)
        metrics |= {"train_acc": 0.75, "test_acc": 0.75, "seconds": 0.01}
        stats = [
            {
                **dict.fromkeys(
                    ("grad_norm", "grad_mean_abs", "grad_std", "grad_max_abs", "weight_norm"),
                    1e-3 * (layer + 1),
                ),
                "update_ratio": 1e-4,
                "act_mean": 0.1,
                "act_std": 0.2,
                "saturated_frac": 0.0,
                "dead_frac": 0.1,
                "grad_hist": hist,
            }
            for layer in range(depth + 1)
        ]
        store.record_epoch(template, EpochRecord(epoch, metrics, stats, None))
    store.finish_run(template, "completed", final=FinalMetrics(train_loss=0.5, test_acc=0.75))
    engine.dispose()
    conn = sqlite3.connect(path)
    tables = ("runs", "run_layers", "epoch_metrics", "layer_stats")
    columns = {t: [c.name for c in Base.metadata.tables[t].columns] for t in tables}
    copies = {
        t: "INSERT INTO {t} ({cols}) SELECT {sel} FROM {t} WHERE {key} = ?".format(
            t=t,
            cols=", ".join(columns[t]),
            sel=", ".join("?" if c in ("id", "run_id") else c for c in columns[t]),
            key="id" if t == "runs" else "run_id",
        )
        for t in tables
    }
    for _ in range(runs - 1):
        new = str(uuid.uuid4())
        for t in tables:
            conn.execute(copies[t], (new, template))
    conn.commit()
    total = sum(conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables)
    conn.close()
    return total
