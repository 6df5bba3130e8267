"""`benchmarks/dashboard.py --scale`: the pages on a 100,000-run database (issue 25, item 3).

The database (SQLite, and PostgreSQL where tests/pg_server.py can start a private server) is
written with bulk inserts through SQLAlchemy (`insert(Model)` executemany), not by training:

- 98,900 small runs (depth 2 or 4, 3 epochs, every epoch's layer statistics with histograms);
  the Runs page reads only each run's first and last epoch, so more epochs per run would grow
  the file, not what the page reads;
- one sweep of 1,000 of them (3 architectures x 2 depths x seeds) for the Sweeps page;
- 100 runs (20 configurations x 5 seeds, depth 10, 20 epochs) for Compare grouped by seed.

Measured, each against plain sqlite3 / psycopg reading the same rows on one open connection
(ratio first, absolute times second; medians of paired rounds):

1. Runs page: the rows the page reads (the lean runs list for filters and sorting, one page of
   badges) and an AppTest first render with cold caches, then a filter and a sort;
2. Sweeps page on the 1,000-run sweep: its data and a cold AppTest render;
3. Compare, 100 runs grouped by seed: its data and a cold AppTest render.
"""

from __future__ import annotations

import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, insert

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)

from gradscope.db import frames  # noqa: E402
from gradscope.db.engine import make_engine  # noqa: E402
from gradscope.db.models import (  # noqa: E402
    EpochMetricModel,
    LayerStatModel,
    RunLayerModel,
    RunModel,
)
from gradscope.vocab.config import make_config  # noqa: E402
from gradscope.vocab.fields import (  # noqa: E402
    DIVERGENCE_LAYER_FIELDS,
    EPOCH_FIELDS,
    FINISHED_STATUSES,
    HIST_BINS,
    LAYER_STAT_FIELDS,
)

N_SCALE, N_SWEEP, N_COMPARE = 100_000, 1_000, 100
SMALL_EPOCHS = 3
COMPARE_SHAPE = {"depth": 10, "epochs": 20}
ARCHS = ("sigmoid", "relu", "resnet")
CHUNK = 5_000  # runs per insert round: bounded memory, one transaction per round
SWEEP_NAME = "scale sweep"


def _config(cache: dict, arch: str, depth: int, epochs: int, seed: int) -> dict:
    key = (arch, depth, epochs, seed)
    if key not in cache:  # pydantic once per distinct config, not 100,000 times
        cache[key] = make_config(
            {"arch": arch, "depth": depth, "epochs": epochs, "seed": seed}
        ).model_dump()
    return cache[key]


def _children(run_id: str, depth: int, epochs: int, rng: np.random.Generator) -> tuple[list, ...]:
    n_layers = depth + 1
    layers = [
        {
            "run_id": run_id,
            "layer": la,
            "name": f"linears.{la}",
            "kind": "hidden",
            "activation": "sigmoid",
            "fan_in": 32,
            "fan_out": 32,
            "n_params": 1056,
        }
        for la in range(n_layers)
    ]
    hist = rng.integers(0, 40, size=HIST_BINS + 2).astype("<i4").tobytes()
    values = rng.random((epochs, n_layers, len(LAYER_STAT_FIELDS))).tolist()
    stats = [
        {
            "run_id": run_id,
            "epoch": e + 1,
            "layer": la,
            **dict(zip(LAYER_STAT_FIELDS, values[e][la], strict=True)),
            "dead_frac": None,
            "grad_hist": hist,
        }
        for e in range(epochs)
        for la in range(n_layers)
    ]
    metrics = rng.random((epochs, len(EPOCH_FIELDS))).tolist()
    epoch_rows = [
        {"run_id": run_id, "epoch": e + 1, **dict(zip(EPOCH_FIELDS, metrics[e], strict=True))}
        for e in range(epochs)
    ]
    return layers, stats, epoch_rows


def build_scale(target: str) -> dict[str, Any]:
    """Write the 100,000-run database at `target` (a path or URL); returns the sweep's id and the
    Compare runs' ids."""
    engine = make_engine(target)
    rng = np.random.default_rng(0)
    start = datetime(2026, 1, 1, tzinfo=UTC)
    configs: dict = {}
    sweep_id = str(uuid.uuid4())
    compare_ids: list[str] = []
    plan: list[tuple[str, int, int, int, str | None]] = []  # arch, depth, epochs, seed, sweep
    n_small = N_SCALE - N_SWEEP - N_COMPARE
    plan += [
        (ARCHS[i % 3], 2 + 2 * (i // 3 % 2), SMALL_EPOCHS, i % 7, None) for i in range(n_small)
    ]
    plan += [
        (ARCHS[i % 3], 2 + 2 * (i // 3 % 2), SMALL_EPOCHS, i // 6, sweep_id) for i in range(N_SWEEP)
    ]
    compare_cfgs = [(a, d) for a in ARCHS for d in (3, 5, 8, 10, 12, 15)] + [
        ("relu", 20),
        ("resnet", 20),
    ]
    plan += [(a, d, COMPARE_SHAPE["epochs"], s, None) for a, d in compare_cfgs for s in range(5)]
    for lo in range(0, len(plan), CHUNK):
        runs, layer_rows, stat_rows, epoch_rows = [], [], [], []
        for k, (arch, depth, epochs, seed, sweep) in enumerate(plan[lo : lo + CHUNK], start=lo):
            run_id = str(uuid.uuid4())
            when = start + timedelta(seconds=k)
            runs.append(
                {
                    "id": run_id,
                    "name": f"run {k}",
                    "status": "completed",
                    "config": _config(configs, arch, depth, epochs, seed),
                    "arch": arch,
                    "dataset": "moons",
                    "depth": depth,
                    "width": 32,
                    "seed": seed,
                    "sweep_id": sweep,
                    "sweep_name": SWEEP_NAME if sweep else None,
                    "created_at": when,
                    "finished_at": when,
                    "epochs_total": epochs,
                    "epochs_done": epochs,
                    "cancel_requested": False,
                    "final_test_acc": 0.5 + (k % 50) / 100,
                    "final_pred_std": 0.1,
                    "seq": k + 1,
                }
            )
            if k >= n_small + N_SWEEP:
                compare_ids.append(run_id)
            la, st_, ep = _children(run_id, depth, epochs, rng)
            layer_rows += la
            stat_rows += st_
            epoch_rows += ep
        with engine.begin() as conn:
            conn.execute(insert(RunModel), runs)
            conn.execute(insert(RunLayerModel), layer_rows)
            conn.execute(insert(LayerStatModel), stat_rows)
            conn.execute(insert(EpochMetricModel), epoch_rows)
    engine.dispose()
    return {"sweep_id": sweep_id, "compare_ids": compare_ids}


def scale_info(target: str) -> dict[str, Any]:
    """The sweep's id and the Compare runs' ids of a database `build_scale` wrote."""
    raw = Raw(target)
    try:
        [(sweep_id,)] = raw.rows(
            "SELECT DISTINCT sweep_id FROM runs WHERE sweep_name = ?", [SWEEP_NAME]
        )
        compare = raw.rows(
            "SELECT id FROM runs WHERE epochs_total = ? ORDER BY seq", [COMPARE_SHAPE["epochs"]]
        )
    finally:
        raw.close()
    return {"sweep_id": sweep_id, "compare_ids": [r[0] for r in compare]}


# -- raw reads of the same rows ------------------------------------------------------------------


class Raw:
    """Plain driver reads (sqlite3 or psycopg) on one open connection, with the driver's own
    parameter style."""

    def __init__(self, target: str) -> None:
        self.pg = target.startswith("postgresql")
        if self.pg:
            import psycopg

            self.conn: Any = psycopg.connect(target.replace("postgresql+psycopg", "postgresql"))
            self.conn.autocommit = True
        else:
            self.conn = sqlite3.connect(target)

    def rows(self, sql: str, params: list | tuple = ()) -> list[tuple]:
        if self.pg:
            sql = sql.replace("?", "%s")
        cur = self.conn.cursor()
        cur.execute(sql, params)
        return cur.fetchall()

    def close(self) -> None:
        self.conn.close()


def _marks(n: int) -> str:
    return ",".join("?" * n)


def raw_runs_list(raw: Raw) -> list[tuple]:
    """The runs list the Runs page filters and sorts (every run's columns, newest first)."""
    cols = ", ".join(frames.RUN_COLUMNS)
    rows = raw.rows(
        f"SELECT {cols}, substr(error, 1, 300), notes FROM runs "
        "ORDER BY created_at DESC, seq DESC, id"
    )
    raw.rows("SELECT run_id, tag FROM run_tags ORDER BY run_id, tag")
    return rows


def raw_ends(raw: Raw, ids: list[str]) -> None:
    """First and last epoch rows of these runs (what a page of diagnosis badges needs)."""
    marks = _marks(len(ids))
    ends = (
        f"(SELECT id AS run_id, 1 AS epoch FROM runs WHERE id IN ({marks}) UNION ALL "
        f"SELECT id, epochs_done FROM runs WHERE epochs_done > 1 AND id IN ({marks})) AS ends"
    )
    layer_cols = ", ".join("l." + c for c in frames.END_LAYER_COLUMNS)
    raw.rows(
        f"SELECT l.run_id, l.epoch, l.layer, {layer_cols} "
        f"FROM {ends} JOIN layer_stats l ON l.run_id = ends.run_id AND l.epoch = ends.epoch",
        [*ids, *ids],
    )
    raw.rows(
        f"SELECT e.run_id, e.epoch, {', '.join('e.' + c for c in frames.END_EPOCH_COLUMNS)} "
        f"FROM {ends} JOIN epoch_metrics e ON e.run_id = ends.run_id AND e.epoch = ends.epoch",
        [*ids, *ids],
    )


def raw_sweep(raw: Raw, sweep_id: str) -> None:
    """The page's picker (every sweep with its counts), then the chosen sweep's runs: epoch-1
    gradient norms and configs (text in SQLite, parsed by psycopg from PostgreSQL's JSON)."""
    raw.rows(
        "SELECT sweep_id, min(sweep_name), count(*), "
        f"sum(CASE WHEN status IN ({', '.join(repr(s) for s in FINISHED_STATUSES)}) "
        "THEN 1 ELSE 0 END), min(created_at) FROM runs "
        "WHERE sweep_id IS NOT NULL GROUP BY sweep_id ORDER BY min(created_at) DESC, sweep_id"
    )
    raw.rows(
        "SELECT r.id, r.arch, r.depth, r.seed, r.final_test_acc, l.layer, l.grad_norm FROM runs r "
        "LEFT JOIN layer_stats l ON l.run_id = r.id AND l.epoch = 1 WHERE r.sweep_id = ?",
        [sweep_id],
    )
    raw.rows("SELECT id, config FROM runs WHERE sweep_id = ?", [sweep_id])


def raw_compare(raw: Raw, ids: list[str], epoch: int, layer: int) -> None:
    marks = _marks(len(ids))
    raw.rows(
        f"SELECT {', '.join(frames.RUN_COLUMNS)}, config, attempts FROM runs WHERE id IN ({marks})",
        ids,
    )
    raw.rows(
        f"SELECT run_id, epoch, {', '.join(EPOCH_FIELDS)}, first_nonfinite_step "
        f"FROM epoch_metrics WHERE run_id IN ({marks}) ORDER BY run_id, epoch",
        ids,
    )
    cols = ", ".join((*LAYER_STAT_FIELDS, *DIVERGENCE_LAYER_FIELDS))
    raw.rows(
        f"SELECT run_id, epoch, layer, {cols} FROM layer_stats WHERE run_id IN ({marks}) "
        "ORDER BY run_id, epoch, layer",
        ids,
    )
    raw.rows(
        f"SELECT run_id, grad_hist FROM layer_stats WHERE run_id IN ({marks}) AND epoch = ? "
        "AND layer = ?",
        [*ids, epoch, layer],
    )


# -- timing ---------------------------------------------------------------------------------------


def paired(ours: Callable[[], object], raw: Callable[[], object], rounds: int) -> dict[str, float]:
    """Median and range of ours/raw over rounds that alternate the two (same machine state)."""
    mine, theirs = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        raw()
        theirs.append(time.perf_counter() - t)
        t = time.perf_counter()
        ours()
        mine.append(time.perf_counter() - t)
    ratios = [m / r for m, r in zip(mine, theirs, strict=True)]
    return {
        "ratio": statistics.median(ratios),
        "lo": min(ratios),
        "hi": max(ratios),
        "ours": statistics.median(mine),
        "raw": statistics.median(theirs),
    }


def show(what: str, m: dict[str, float], target: str) -> None:
    print(
        f"{what}: ratio {m['ratio']:.2f} (range {m['lo']:.2f}-{m['hi']:.2f}, target {target}); "
        f"{m['ours'] * 1e3:.0f} ms vs raw {m['raw'] * 1e3:.0f} ms",
        flush=True,
    )


def _app(target: str):  # noqa: ANN202
    from streamlit.testing.v1 import AppTest

    os.environ["GRADSCOPE_DB"] = target
    os.environ.pop("GRADSCOPE_WORKER_PID", None)
    return AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=300)


def _timed(action: Callable[[], object]) -> float:
    t = time.perf_counter()
    action()
    return time.perf_counter() - t


def renders(target: str, info: dict[str, Any], rounds: int) -> dict[str, list[float]]:
    """Cold-cache AppTest renders (after one warm-up for imports and the engine): seconds per
    round of the Runs page, a filter, a sort, the next page; Sweeps; Compare grouped."""
    import streamlit as st

    from gradscope.dashboard import db_gateway

    def cold() -> None:  # every cached read, not the engine (kept open, as the dashboard does)
        st.cache_data.clear()
        db_gateway.clear_runs_frames()

    _app(target).run()
    out: dict[str, list[float]] = {}
    for _ in range(rounds):
        cold()
        at = _app(target)
        out.setdefault("runs first render", []).append(_timed(at.run))
        assert not at.exception, at.exception
        rows = [df.value for df in at.dataframe if "diagnosis" in df.value.columns][0]
        assert len(rows) <= db_gateway_page_rows(), len(rows)
        out.setdefault("runs filter (arch)", []).append(
            _timed(at.pills(key="runs_arch").select("relu").run)
        )
        out.setdefault("runs sort (test acc)", []).append(
            _timed(at.selectbox(key="runs_sort").select("test acc").run)
        )
        out.setdefault("runs next page", []).append(_timed(at.button(key="runs_next").click().run))
        assert not at.exception, at.exception
        cold()
        at = _app(target)
        at.query_params["sweep"] = info["sweep_id"]
        at.switch_page("app_pages/sweeps.py")
        out.setdefault("sweeps (1,000 runs)", []).append(_timed(at.run))
        assert not at.exception, at.exception
        cold()
        at = _app(target)
        at.query_params["runs"] = ",".join(info["compare_ids"])
        at.query_params["group"] = "seeds"
        at.switch_page("app_pages/compare.py")
        out.setdefault("compare (100 runs, grouped)", []).append(_timed(at.run))
        assert not at.exception, at.exception
    return out


def db_gateway_page_rows() -> int:
    from gradscope.dashboard import tables

    return tables.PAGE_ROWS


def measure(target: str, info: dict[str, Any], rounds: int, label: str) -> None:
    from gradscope.dashboard import db_gateway, seeds, tables

    engine: Engine = make_engine(target)
    raw = Raw(target)
    page_ids: list[str] = []

    def ours_runs() -> None:
        listing = db_gateway.newest_first(frames.runs(engine))
        page_ids[:] = list(listing["id"][: tables.PAGE_ROWS])
        frames.run_ends(engine, page_ids)

    def raw_runs() -> None:
        rows = raw_runs_list(raw)
        raw_ends(raw, [r[0] for r in rows[: tables.PAGE_ROWS]])

    show(
        f"[{label}] Runs page data (100,000 runs listed, one page of badges)",
        paired(ours_runs, raw_runs, rounds),
        "<= 2",
    )

    def ours_sweep() -> None:  # what the page reads (dashboard/app_pages/sweeps.py)
        frames.sweeps(engine)
        frames.sweep_summary(engine, info["sweep_id"])
        frames.sweep_configs(engine, info["sweep_id"])

    show(
        f"[{label}] Sweeps data (1,000-run sweep)",
        paired(ours_sweep, lambda: raw_sweep(raw, info["sweep_id"]), rounds),
        "<= 2",
    )

    ids = info["compare_ids"]

    def ours_compare() -> None:
        chosen = frames.selected_runs(engine, ids)
        labels = frames.run_labels(chosen)
        epochs = frames.epochs(engine, labels)
        layers = frames.layer_stats(engine, labels)
        hist = frames.histograms(engine, labels, 10, 3)
        groups = seeds.seed_groups(chosen)
        seeds.aggregate(epochs, groups, ("epoch",), EPOCH_FIELDS)
        seeds.aggregate(layers, groups, ("epoch", "layer"), LAYER_STAT_FIELDS)
        seeds.aggregate(hist, groups, ("bin_left", "bin_right"), ("fraction", "count"))

    show(
        f"[{label}] Compare data (100 runs, grouped by seed)",
        paired(ours_compare, lambda: raw_compare(raw, ids, 10, 3), rounds),
        "<= 2",
    )
    # The raw side of a whole page: the rows it reads, once (the render's denominator).
    raw_page = {
        "runs": statistics.median(_timed(lambda: raw_runs()) for _ in range(rounds)),
        "sweeps": statistics.median(
            _timed(lambda: raw_sweep(raw, info["sweep_id"])) for _ in range(rounds)
        ),
        "compare": statistics.median(
            _timed(lambda: raw_compare(raw, ids, 10, 3)) for _ in range(rounds)
        ),
    }
    raw.close()
    engine.dispose()
    found = renders(target, info, rounds)
    targets = {"runs": 2.0, "sweeps": 2.0, "compare": 3.0}
    for what, times in found.items():
        page = what.split()[0]
        med = statistics.median(times)
        print(
            f"[{label}] AppTest {what}, cold caches: {med:.2f} s (range {min(times):.2f}-"
            f"{max(times):.2f}, target < {targets[page]:.0f} s); {med / raw_page[page]:.1f}x "
            f"the raw read of its rows ({raw_page[page] * 1e3:.0f} ms)",
            flush=True,
        )


def run_scale(rounds: int, db: Path | None, postgres: bool) -> None:
    tmp = tempfile.TemporaryDirectory(prefix="gradscope-scale-")
    path = db or Path(tmp.name) / "scale.db"
    if path.exists():  # a database this benchmark built earlier: reused
        info = scale_info(str(path))
        print(f"reusing {path}", flush=True)
    else:
        t = time.perf_counter()
        info = build_scale(str(path))
        print(
            f"built {path} ({path.stat().st_size / 2**20:.0f} MiB) "
            f"in {time.perf_counter() - t:.0f} s",
            flush=True,
        )
    measure(str(path), info, rounds, "SQLite")
    if postgres:
        sys.path.insert(0, str(ROOT / "tests"))
        from pg_server import PostgresServer, PostgresUnavailable

        try:
            server = PostgresServer().start()
        except PostgresUnavailable as exc:
            print(f"PostgreSQL skipped: {exc}")
            return
        try:
            url = server.create_database("scale")
            t = time.perf_counter()
            info = build_scale(url)
            print(f"built the PostgreSQL database in {time.perf_counter() - t:.0f} s", flush=True)
            measure(url, info, rounds, "PostgreSQL")
        finally:
            server.stop()
    tmp.cleanup()
