"""How fast is the dashboard on a big database? Issue 4's benchmark; prints ratios.

A SQLite database of 10,000 runs (9,990 of depth 4 x 10 epochs, 10 of depth 50 x 200 epochs,
every layer statistic with its histogram, decision grids and test points; rows made with bulk
inserts, not by training). With the 10 deep runs chosen for Compare:

1. Runs page data: gradscope.db.frames.runs + run_ends (every run's first and last epoch, for the
badges)
   against plain sqlite3 reading the same rows. Target: under 2x.
2. Compare page data: selected_runs, epochs, layer_stats, one layer's histograms at one epoch
   and the decision maps, against plain sqlite3 reading the same rows. Target: under 2x.
   Both "cold": no cached results (the engine and the sqlite3 connection stay open, as the
   dashboard keeps its engine; the OS file cache is warm).
3. A full AppTest render of the Compare page for the 10 runs, Streamlit caches cleared first.
   Target: under 3 s.
4. Compare with 50 runs (10 configs x 5 seeds, depth 10 x 20 epochs, a database of their
   own): its data against plain sqlite3 (ungrouped, and grouped: the seed medians and bands
   computed in pandas on top), and a full cold AppTest render, ungrouped and grouped.
   Targets: data under 2x, render under 3 s.

    python benchmarks/dashboard.py [--db PATH (reused if it exists)] [--rounds 5]
    python benchmarks/dashboard.py --scale [--postgres]  (100,000 runs: dashboard_scale.py)
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import Engine, insert

ROOT = Path(__file__).resolve().parent.parent
# The repository root first: the benchmark runs from a checkout.
sys.path[0] = str(ROOT)

from gradscope.dashboard import seeds, tables  # noqa: E402
from gradscope.db import frames  # noqa: E402
from gradscope.db.engine import make_engine  # noqa: E402
from gradscope.db.models import (  # noqa: E402
    DecisionGridModel,
    EpochMetricModel,
    LayerStatModel,
    RunLayerModel,
    RunModel,
    RunPointsModel,
)
from gradscope.vocab.config import make_config  # noqa: E402
from gradscope.vocab.fields import (  # noqa: E402
    DIVERGENCE_LAYER_FIELDS,
    EPOCH_FIELDS,
    HIST_BINS,
    LAYER_STAT_FIELDS,
)

N_RUNS, N_DEEP = 10_000, 10
SMALL = {"depth": 4, "epochs": 10}
DEEP = {"depth": 50, "epochs": 200}
GRID, POINTS = 48, 512
CHOSEN_EPOCH, CHOSEN_LAYER = 120, 3
BATCH = 20_000


# -- the database -------------------------------------------------------------------------------


def _run_row(i: int, arch: str, shape: dict, now: datetime) -> dict:
    cfg = make_config({"arch": arch, "seed": i % 5, **shape}).model_dump()
    return {
        "id": str(uuid.uuid4()),
        "name": f"bench {i}",
        "status": "completed",
        "config": cfg,
        "arch": arch,
        "dataset": "moons",
        "depth": shape["depth"],
        "width": 32,
        "seed": i % 5,
        "sweep_id": None,
        "sweep_name": None,
        "created_at": now,
        "finished_at": now,
        "epochs_total": shape["epochs"],
        "epochs_done": shape["epochs"],
        "cancel_requested": False,
        "final_test_acc": 0.5 + (i % 50) / 100,
        "final_pred_std": 0.1,
    }


def _run_children(run_id: str, depth: int, epochs: int, rng: np.random.Generator):
    """Rows of every child table for one run, shaped as the trainer writes them."""
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
    values = rng.random((epochs, n_layers, len(LAYER_STAT_FIELDS)))
    stats = []
    for e in range(epochs):
        for la in range(n_layers):
            row = dict(zip(LAYER_STAT_FIELDS, values[e, la].tolist(), strict=True))
            row["dead_frac"] = None  # sigmoid layers: not applicable (NULL)
            stats.append({"run_id": run_id, "epoch": e + 1, "layer": la, **row, "grad_hist": hist})
    metrics = rng.random((epochs, len(EPOCH_FIELDS)))
    epoch_rows = [
        {
            "run_id": run_id,
            "epoch": e + 1,
            **dict(zip(EPOCH_FIELDS, metrics[e].tolist(), strict=True)),
        }
        for e in range(epochs)
    ]
    every = max(1, round(epochs / 10))
    grid_epochs = sorted({1, epochs} | set(range(every, epochs + 1, every)))
    probs = rng.random(GRID * GRID).astype("<f2").tobytes()
    grids = [
        {
            "run_id": run_id,
            "epoch": e,
            "size": GRID,
            "x_min": -2.5,
            "x_max": 2.5,
            "y_min": -2.0,
            "y_max": 2.0,
            "probs": probs,
        }
        for e in grid_epochs
    ]
    pts = rng.normal(size=(POINTS, 3)).astype("<f4")
    pts[:, 2] = pts[:, 2] > 0
    points = [{"run_id": run_id, "n": POINTS, "points": pts.tobytes()}]
    return layers, stats, epoch_rows, grids, points


def build(path: Path) -> list[str]:
    """Write the benchmark database; returns the ids of the deep runs."""
    engine = make_engine(str(path))
    rng = np.random.default_rng(0)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    archs = ("sigmoid", "relu", "resnet")
    runs = [_run_row(i, archs[i % 3], SMALL, now) for i in range(N_RUNS - N_DEEP)]
    deep = [_run_row(i, archs[i % 3], DEEP, now) for i in range(N_DEEP)]
    buffers: dict = {
        m: []
        for m in (
            RunLayerModel,
            LayerStatModel,
            EpochMetricModel,
            DecisionGridModel,
            RunPointsModel,
        )
    }
    with engine.begin() as conn:
        conn.execute(insert(RunModel), runs + deep)

        def flush(force: bool = False) -> None:
            for model, rows in buffers.items():
                if rows and (force or len(rows) >= BATCH):
                    conn.execute(insert(model), rows)
                    rows.clear()

        for row, shape in [(r, SMALL) for r in runs] + [(r, DEEP) for r in deep]:
            parts = _run_children(row["id"], shape["depth"], shape["epochs"], rng)
            for model, rows in zip(buffers, parts, strict=True):
                buffers[model].extend(rows)
            flush()
        flush(force=True)
    engine.dispose()
    return [r["id"] for r in deep]


def deep_ids(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [r[0] for r in conn.execute("SELECT id FROM runs WHERE depth = 50 ORDER BY id")]


# -- what is timed ------------------------------------------------------------------------------


# Both sides keep one open connection, as the dashboard keeps its engine (st.cache_resource):
# "cold" means no cached query results, not a new connection per read.


def gradscope_runs_page(engine: Engine) -> None:
    frames.runs(engine)
    frames.run_ends(engine)


def gradscope_runs_table(engine: Engine) -> None:
    """The Runs page data and the pure table building on top (badges for every run)."""
    runs, ends = frames.runs(engine), frames.run_ends(engine)
    tables.runs_table(runs, tables.badges(runs, ends.layers, ends.epochs))


# Every run's first and last epoch, as gradscope.db.frames reads them (primary-key lookups).
ENDS = (
    "(SELECT id AS run_id, 1 AS epoch FROM runs "
    "UNION ALL SELECT id, epochs_done FROM runs WHERE epochs_done > 1) AS ends"
)


def raw_runs_page(conn: sqlite3.Connection) -> None:
    conn.execute(
        "SELECT id, name, status, arch, dataset, depth, width, seed, sweep_id, sweep_name, "
        "epochs_done, epochs_total, final_test_acc, cancel_requested, created_at, finished_at, "
        "seq, substr(error, 1, 300), notes FROM runs ORDER BY created_at DESC, seq DESC, id"
    ).fetchall()
    conn.execute("SELECT run_id, tag FROM run_tags ORDER BY run_id, tag").fetchall()
    conn.execute(
        "SELECT l.run_id, l.epoch, l.layer, l.grad_norm, l.grad_max_abs, l.act_std, "
        f"l.saturated_frac, l.dead_frac FROM {ENDS} "
        "JOIN layer_stats l ON l.run_id = ends.run_id AND l.epoch = ends.epoch"
    ).fetchall()
    conn.execute(
        "SELECT e.run_id, e.epoch, e.train_loss, e.test_loss, e.test_acc, e.pred_std "
        f"FROM {ENDS} JOIN epoch_metrics e ON e.run_id = ends.run_id AND e.epoch = ends.epoch"
    ).fetchall()


def gradscope_compare_page(
    engine: Engine,
    ids: list[str],
    epoch: int = CHOSEN_EPOCH,
    layer: int = CHOSEN_LAYER,
    grouped: bool = False,
    maps: bool = True,
) -> None:
    chosen = frames.selected_runs(engine, ids)
    labels = frames.run_labels(chosen)
    epochs = frames.epochs(engine, labels)
    layers = frames.layer_stats(engine, labels)
    hist = frames.histograms(engine, labels, epoch, layer)
    if maps:
        frames.decision_maps(engine, labels, epoch)
    if grouped:  # what "Group seeds" adds: medians and bands of every per-epoch/layer frame
        groups = seeds.seed_groups(chosen)
        seeds.aggregate(epochs, groups, ("epoch",), EPOCH_FIELDS)
        seeds.aggregate(layers, groups, ("epoch", "layer"), LAYER_STAT_FIELDS)
        seeds.aggregate(hist, groups, ("bin_left", "bin_right"), ("fraction", "count"))


def raw_compare_page(
    conn: sqlite3.Connection,
    ids: list[str],
    epoch: int = CHOSEN_EPOCH,
    layer: int = CHOSEN_LAYER,
    maps: bool = True,
) -> None:
    # The same columns gradscope.db.frames reads (the page needs them all: the divergence ones feed
    # the
    # diagnosis), so that the ratio is the cost of turning rows into frames.
    marks = ",".join("?" * len(ids))
    conn.execute(
        f"SELECT {', '.join(frames.RUN_COLUMNS)}, config, attempts FROM runs WHERE id IN ({marks})",
        ids,
    ).fetchall()
    conn.execute(
        f"SELECT run_id, epoch, {', '.join(EPOCH_FIELDS)}, first_nonfinite_step "
        f"FROM epoch_metrics WHERE run_id IN ({marks}) ORDER BY run_id, epoch",
        ids,
    ).fetchall()
    conn.execute(
        f"SELECT run_id, epoch, layer, {', '.join((*LAYER_STAT_FIELDS, *DIVERGENCE_LAYER_FIELDS))} "
        f"FROM layer_stats WHERE run_id IN ({marks}) ORDER BY run_id, epoch, layer",
        ids,
    ).fetchall()
    conn.execute(
        f"SELECT run_id, grad_hist FROM layer_stats WHERE run_id IN ({marks}) AND epoch = ? "
        "AND layer = ?",
        [*ids, epoch, layer],
    ).fetchall()
    if not maps:
        return
    conn.execute(
        f"SELECT g.run_id, g.epoch, g.size, g.x_min, g.x_max, g.y_min, g.y_max, g.probs "
        f"FROM decision_grids g JOIN (SELECT run_id, max(epoch) AS epoch FROM decision_grids "
        f"WHERE run_id IN ({marks}) AND epoch <= ? GROUP BY run_id) m "
        "ON m.run_id = g.run_id AND m.epoch = g.epoch",
        [*ids, epoch],
    ).fetchall()
    conn.execute(
        f"SELECT run_id, n, points FROM run_points WHERE run_id IN ({marks})", ids
    ).fetchall()


def median_seconds(action: Callable[[], None], rounds: int) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def paired(ours: Callable[[], None], raw: Callable[[], None], rounds: int) -> tuple[float, float]:
    """Median seconds of each, alternating so that both see the same machine state."""
    mine, theirs = [], []
    for _ in range(rounds):
        theirs.append(median_seconds(raw, 1))
        mine.append(median_seconds(ours, 1))
    return statistics.median(mine), statistics.median(theirs)


# -- Compare with 50 runs (10 configs x 5 seeds) -------------------------------------------------

FIFTY = {"depth": 10, "epochs": 20}
FIFTY_CONFIGS = [(a, d) for a in ("sigmoid", "relu", "resnet") for d in (5, 10, 20)] + [
    ("relu", 30)
]
FIFTY_EPOCH, FIFTY_LAYER = 10, 3


def build_fifty(path: Path) -> list[str]:
    """50 runs: 10 configurations x 5 seeds, depth 5..30, 20 epochs each; returns their ids."""
    engine = make_engine(str(path))
    rng = np.random.default_rng(1)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    runs, children = [], []
    for k, (arch, depth) in enumerate(FIFTY_CONFIGS):
        for seed in range(5):
            shape = {"depth": depth, "epochs": FIFTY["epochs"]}
            row = _run_row(k * 5 + seed, arch, shape, now)
            row["config"] = make_config({"arch": arch, "seed": seed, **shape}).model_dump()
            row["seed"], row["seq"] = seed, len(runs) + 1
            runs.append(row)
            children.append(_run_children(row["id"], depth, FIFTY["epochs"], rng))
    models = (RunLayerModel, LayerStatModel, EpochMetricModel, DecisionGridModel, RunPointsModel)
    with engine.begin() as conn:
        conn.execute(insert(RunModel), runs)
        for i, model in enumerate(models):
            conn.execute(insert(model), [row for parts in children for row in parts[i]])
    engine.dispose()
    return [r["id"] for r in runs]


def fifty_runs(rounds: int) -> None:
    with tempfile.TemporaryDirectory(prefix="gradscope-bench50-") as tmp:
        path = Path(tmp) / "fifty.db"
        ids = build_fifty(path)
        engine = make_engine(str(path))
        conn = sqlite3.connect(path)
        # With more than 12 runs the page reads the decision maps only when asked to show
        # them: measured both ways (what the page reads, and with the maps too).
        for grouped, maps in ((False, False), (True, False), (False, True)):
            ours, raw = paired(
                lambda g=grouped, m=maps: gradscope_compare_page(
                    engine, ids, FIFTY_EPOCH, FIFTY_LAYER, grouped=g, maps=m
                ),
                lambda m=maps: raw_compare_page(conn, ids, FIFTY_EPOCH, FIFTY_LAYER, maps=m),
                rounds,
            )
            what = ("grouped" if grouped else "ungrouped") + (
                ", with decision maps" if maps else ", as the page reads (no maps)"
            )
            print(
                f"Compare data, 50 runs ({what}): {ours * 1e3:.0f} ms vs sqlite3 "
                f"{raw * 1e3:.0f} ms -> ratio {ours / raw:.2f} (target < 2)"
            )
        conn.close()
        engine.dispose()
        for grouped in (False, True):
            seconds, n_charts = render_compare_only(path, ids, FIFTY_EPOCH, grouped)
            print(
                f"AppTest render of Compare, 50 runs ({'grouped' if grouped else 'ungrouped'}), "
                f"cold caches: {seconds:.2f} s with {n_charts} charts (target < 3 s)"
            )


def render_compare_only(path: Path, ids: list[str], epoch: int, grouped: bool) -> tuple[float, int]:
    """Seconds for AppTest to render Compare on `ids` with cold Streamlit caches (after one
    warm-up run for imports and the engine), and how many charts it drew."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["GRADSCOPE_DB"] = str(path)
    os.environ.pop("GRADSCOPE_WORKER_PID", None)
    AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=120).run()
    st.cache_data.clear()
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=120)
    at.query_params["runs"] = ",".join(ids)
    at.query_params["epoch"] = str(epoch)
    at.session_state["compare_group_seeds"] = grouped
    at.run()  # the Runs page (the router's default); Compare below is what is timed
    st.cache_data.clear()
    at.switch_page("app_pages/compare.py")
    start = time.perf_counter()
    at.run()
    seconds = time.perf_counter() - start
    assert not at.exception, at.exception
    assert at.toggle(key="compare_group_seeds").value is grouped
    return seconds, len(at.get("vega_lite_chart"))


def render_compare(path: Path, ids: list[str]) -> tuple[float, float, int]:
    """Seconds for AppTest to render the Runs page (10,000 runs) and then the Compare page
    (the 10 deep runs), each with cold Streamlit caches; and how many charts Compare drew."""
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    os.environ["GRADSCOPE_DB"] = str(path)
    os.environ.pop("GRADSCOPE_WORKER_PID", None)
    warm = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=120)
    warm.run()  # imports, the engine
    st.cache_data.clear()
    at = AppTest.from_file(str(ROOT / "dashboard" / "app.py"), default_timeout=120)
    start = time.perf_counter()
    at.run()
    runs_s = time.perf_counter() - start
    assert not at.exception, at.exception
    st.cache_data.clear()
    at.query_params["runs"] = ",".join(ids)
    at.query_params["epoch"] = str(CHOSEN_EPOCH)
    at.switch_page("app_pages/compare.py")
    start = time.perf_counter()
    at.run()
    compare_s = time.perf_counter() - start
    assert not at.exception, at.exception
    return runs_s, compare_s, len(at.get("vega_lite_chart"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", type=Path, help="database file to use (built if missing)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--only-fifty", action="store_true", help="only part 4 (Compare with 50 runs)"
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="only the 100,000-run pages (benchmarks/dashboard_scale.py; --db: the SQLite file)",
    )
    parser.add_argument(
        "--postgres", action="store_true", help="with --scale: PostgreSQL too (tests/pg_server.py)"
    )
    args = parser.parse_args()
    if args.scale:
        sys.path.insert(1, str(ROOT / "benchmarks"))
        from dashboard_scale import run_scale

        run_scale(args.rounds, args.db, args.postgres)
        return
    fifty_runs(args.rounds)
    if args.only_fifty:
        return
    tmp = tempfile.TemporaryDirectory(prefix="gradscope-bench-")
    path = args.db or Path(tmp.name) / "bench.db"
    if not path.exists():
        start = time.perf_counter()
        build(path)
        print(
            f"built {path} ({path.stat().st_size / 2**20:.0f} MiB) in "
            f"{time.perf_counter() - start:.0f} s"
        )
    ids = deep_ids(path)
    assert len(ids) == N_DEEP

    engine = make_engine(str(path))
    conn = sqlite3.connect(path)
    ours, raw = paired(
        lambda: gradscope_runs_page(engine), lambda: raw_runs_page(conn), args.rounds
    )
    table = median_seconds(lambda: gradscope_runs_table(engine), args.rounds)
    print(
        f"Runs page data ({N_RUNS} runs): {ours * 1e3:.0f} ms vs sqlite3 {raw * 1e3:.0f} ms "
        f"-> ratio {ours / raw:.2f} (target < 2); with badges and table: {table * 1e3:.0f} ms"
    )
    ours, raw = paired(
        lambda: gradscope_compare_page(engine, ids),
        lambda: raw_compare_page(conn, ids),
        args.rounds,
    )
    print(
        f"Compare page data ({N_DEEP} runs x depth 50 x 200 epochs): {ours * 1e3:.0f} ms vs "
        f"sqlite3 {raw * 1e3:.0f} ms -> ratio {ours / raw:.2f} (target < 2)"
    )
    conn.close()
    engine.dispose()
    runs_s, compare_s, n_charts = render_compare(path, ids)
    print(
        f"AppTest render, cold caches: Runs page {runs_s:.2f} s; Compare page "
        f"{compare_s:.2f} s with {n_charts} charts (target < 3 s)"
    )
    tmp.cleanup()


if __name__ == "__main__":
    main()
