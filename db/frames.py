"""Reads for the dashboard: pandas DataFrames from a handful of set-based queries.

Every function reads all the runs it is given in one or two statements (no per-run loops),
names the columns it returns (blobs only where it decodes them), and returns plain DataFrames:
NULL reads back as NaN in numeric columns (see `gradscope.db.floats`), blobs are decoded with numpy
(gradient histograms are int32, decision grids float16, test points float32, all little-endian),
and every per-run frame carries `run_id` and a readable, unique `run_label` for chart legends.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sqlalchemy import (
    Engine,
    Select,
    String,
    Subquery,
    and_,
    case,
    cast,
    func,
    literal,
    select,
    union_all,
)

from gradscope.db.models import (
    DecisionGridModel,
    EpochMetricModel,
    LayerStatModel,
    RunModel,
    RunPointsModel,
    RunTagModel,
)
from gradscope.db.models import RunMetricModel as _M
from gradscope.db.models import RunWarningModel as _W
from gradscope.db.transactions import transaction
from gradscope.db.warnings import warning_summary
from gradscope.vocab.custom import CUSTOM_ARCH
from gradscope.vocab.fields import (
    EPOCH_COLUMNS,
    FINAL_COLUMNS,
    FINISHED_STATUSES,
    HIST_BINS,
    HIST_LOG10_MAX,
    HIST_LOG10_MIN,
    HIST_SLOTS,
    STAT_COLUMNS,
)
from gradscope.vocab.fields import RUN_COLUMNS as VOCAB_RUN_COLUMNS

# run_id -> run_label of the runs to read.
Labels = Mapping[str, str]

HIST_WIDTH = (HIST_LOG10_MAX - HIST_LOG10_MIN) / HIST_BINS

_R, _E, _L, _T = RunModel, EpochMetricModel, LayerStatModel, RunTagModel

# The runs list's columns: the vocabulary's run columns less what only an export needs, then
# the cancel flag and `seq`, the creation order (a run's colour: gradscope.dashboard.colors).
_EXPORT_ONLY = {*FINAL_COLUMNS, "started_at", "source_file", "imported_at"} - {"final_test_acc"}
RUN_COLUMNS = (
    *(c for c in VOCAB_RUN_COLUMNS if c not in _EXPORT_ONLY),
    "cancel_requested",
    "seq",
)
ERROR_PREVIEW_CHARS = 300
_DATES = ("created_at", "finished_at")  # the runs list's dates


def _read(stmt: Select, engine: Engine, *, plain: bool = False) -> list[tuple]:
    """All rows of one statement as tuples; driver errors become StorageError.

    `plain`: take the rows straight from the driver's cursor, skipping SQLAlchemy's Row objects
    and result processing (about half the cost of a big read). Only for statements whose
    columns need no conversion: numbers, text, blobs; not dates or JSON (text in SQLite).
    """
    with transaction(engine, "database read failed") as conn:
        result = conn.execute(stmt)
        rows = result.cursor.fetchall() if plain else [tuple(r) for r in result]
        result.close()
        return rows


def _frame(rows: list[tuple], columns: Sequence[str], floats: Sequence[str] = ()) -> pd.DataFrame:
    """Tuples to a DataFrame; `floats` become float64 with NULL as NaN."""
    frame = pd.DataFrame(rows, columns=list(columns))
    for name in floats:
        if frame[name].dtype != np.float64:  # all NULL (object) or empty
            frame[name] = frame[name].astype(np.float64)
    return frame


def _utc(frame: pd.DataFrame, *columns: str) -> None:
    # SQLite hands back naive UTC datetimes (or, read plain, their ISO text), PostgreSQL aware
    # ones: make all of them aware UTC.
    for col in columns:
        frame[col] = pd.to_datetime(frame[col], utc=True, format="ISO8601")


def _label_runs(frame: pd.DataFrame, labels: Labels) -> pd.DataFrame:
    """Insert `run_label` after `run_id` (through the few distinct ids: cheap on big frames)."""
    codes, ids = pd.factorize(frame["run_id"])
    names = np.array([labels[i] for i in ids] + [""], dtype=object)
    frame.insert(1, "run_label", pd.array(names[codes], dtype="str"))
    return frame


def _label_blocks(ids: Sequence[str], sizes: Sequence[int], labels: Labels) -> dict[str, object]:
    """run_id and run_label columns for consecutive blocks of rows, `sizes[i]` rows of run
    `ids[i]`: built from integer codes (one take), not from a Python string per row."""
    codes = np.repeat(np.arange(len(ids)), np.asarray(sizes, dtype=np.int64))
    names = [labels[i] for i in ids]
    return {
        "run_id": pd.array(np.array(ids, dtype=object), dtype="str").take(codes),
        "run_label": pd.array(np.array(names, dtype=object), dtype="str").take(codes),
    }


def _per_run_frame(
    rows: list[tuple], labels: Labels, ints: Sequence[str], floats: Sequence[str]
) -> pd.DataFrame:
    """Rows of (run_id, *ints, *floats), ordered by run_id, as run_id, run_label, ints (int64),
    floats (float64, NULL as NaN): what `_label_runs(_frame(rows, ...))` returns, for about
    half the cost.

    pd.DataFrame(rows) infers every column's type from the Python objects, and labelling hashes
    every run id: on a big read that costs half as much as the fetch itself (14,500 layer rows x
    16 columns: ~15 ms against a ~25 ms fetch). Here numpy converts the tuples in one pass into
    a record array of the known types (~6 ms; a None in a float field becomes NaN)."""
    if not rows:
        return _label_runs(_frame([], ("run_id", *ints, *floats), floats), labels)
    record = np.dtype(
        [("run_id", object), *[(c, np.int64) for c in ints], *[(c, np.float64) for c in floats]]
    )
    table = np.fromiter(rows, dtype=record, count=len(rows))
    # The rows come ordered by run: a run's block starts where the id changes (cheaper than
    # hashing every id).
    run = table["run_id"]
    starts = np.flatnonzero(np.concatenate(([True], run[1:] != run[:-1])))
    sizes = np.diff(np.append(starts, len(run)))
    # The pandas constructor copies the record array's fields into one float block.
    return pd.DataFrame(
        {**_label_blocks(run[starts], sizes, labels), **{c: table[c] for c in (*ints, *floats)}}
    )


# -- the runs list --------------------------------------------------------------------------------


def runs(
    engine: Engine, run_ids: Sequence[str] | None = None, *, newest: int | None = None
) -> pd.DataFrame:
    """Every run, newest first (runs created together in reverse creation order): the columns
    of the runs table, a short error preview, the notes, and `tags` (a sorted list per run).

    `run_ids`: only these runs (primary-key lookups: a few hundred ids at most); `newest`: only
    the newest this many (over the created_at index). Either reads a page's worth of rows, not
    every run."""
    # The dates as text, parsed below by pandas in one vectorised pass: PostgreSQL's driver
    # would hand back datetime objects, which pandas converts one by one (~40% of this read at
    # 100,000 runs). SQLite stores them as text already.
    cols = [
        cast(getattr(_R, c), String).label(c) if c in _DATES else getattr(_R, c)
        for c in RUN_COLUMNS
    ]
    error = func.substr(_R.error, 1, ERROR_PREVIEW_CHARS).label("error")
    newest_first = (_R.created_at.desc(), _R.seq.desc(), _R.id)
    stmt = select(*cols, error, _R.notes).order_by(*newest_first)
    tag_stmt = select(_T.run_id, _T.tag).order_by(_T.run_id, _T.tag)
    if run_ids is not None:
        ids = list(dict.fromkeys(run_ids))
        stmt, tag_stmt = stmt.where(_R.id.in_(ids)), tag_stmt.where(_T.run_id.in_(ids))
    if newest is not None:
        stmt = stmt.limit(newest)
        tag_stmt = tag_stmt.where(_T.run_id.in_(select(stmt.subquery().c.id)))
    # Straight from the driver (plain): SQLAlchemy's row processing was ~60% of this read at
    # 100,000 runs.
    rows = _read(stmt, engine, plain=True)
    frame = _frame(rows, (*RUN_COLUMNS, "error", "notes"), floats=("final_test_acc",))
    tag_rows = _read(tag_stmt, engine, plain=True)
    tags: dict[str, list[str]] = {}
    for run_id, tag in tag_rows:
        tags.setdefault(run_id, []).append(tag)
    # From the fetched tuples: iterating the frame's (Arrow) id column costs ~5x more.
    at = RUN_COLUMNS.index("id")
    frame["tags"] = [tags.get(row[at], []) for row in rows]
    frame["cancel_requested"] = frame["cancel_requested"].astype(bool)
    for col in ("depth", "width", "epochs_done", "epochs_total"):
        frame[col] = frame[col].astype("int64")
    frame["seed"] = frame["seed"].astype("Int64")  # NULL: an API run given no seed
    _utc(frame, *_DATES)
    return frame


def known_tags(engine: Engine) -> list[str]:
    """Every tag some run carries, sorted (over the tag index)."""
    return [tag for (tag,) in _read(select(_T.tag).distinct().order_by(_T.tag), engine)]


def _len(column: object) -> object:
    return func.coalesce(func.length(column), 0)


def data_version(engine: Engine) -> tuple[str, ...]:
    """A cheap fingerprint of the runs table that changes whenever a run is added, deleted,
    started, finished, cancelled or records an epoch: the dashboard's cache key."""
    cancels = func.sum(case((_R.cancel_requested, 1), else_=0))
    stmt = select(
        func.count(),
        func.coalesce(func.sum(_R.epochs_done), 0),
        func.max(_R.created_at),
        func.max(_R.started_at),
        func.max(_R.finished_at),
        func.coalesce(cancels, 0),
        # Annotations (names, notes, tags) change none of the above. Lengths and the tag
        # count catch nearly every edit (the dashboard's own edits also clear its caches).
        func.coalesce(func.sum(_len(_R.name) + _len(_R.notes)), 0),
        select(func.count()).select_from(_T).scalar_subquery(),
        # A live warning lands mid-epoch (gradscope.analysis.spikes): the pages show it then.
        select(func.count()).select_from(_W).scalar_subquery(),
    )
    return tuple(str(v) for v in _read(stmt, engine)[0])


def queue(engine: Engine) -> pd.DataFrame:
    """Queued and running runs, oldest first, with their progress (uses the status index)."""
    names = ("id", "name", "status", "arch", "depth", "dataset", "epochs_done", "epochs_total")
    names = (*names, "cancel_requested")
    stmt = (
        select(*[getattr(_R, c) for c in names])
        .where(_R.status.in_(("queued", "running")))
        .order_by(_R.status.desc(), _R.created_at, _R.seq, _R.id)  # running before queued
    )
    frame = _frame(_read(stmt, engine, plain=True), names)
    frame["cancel_requested"] = frame["cancel_requested"].astype(bool)
    return frame


@dataclass(frozen=True)
class RunEnds:
    """What a runs-table diagnosis badge needs, for every run at once: layer statistics at the
    first and last recorded epoch, and the last epoch's metrics."""

    layers: pd.DataFrame  # run_id, epoch, layer, grad_norm, grad_max_abs, saturated_frac, ...
    epochs: pd.DataFrame  # run_id, epoch, train_loss, test_loss, test_acc, pred_std
    warnings: pd.DataFrame | None = None  # gradscope.db.warnings.warning_summary
    facts: dict[str, dict] | None = None  # custom runs' config.model.facts, by run id
    # runs.peak_grad by run id (runs that have one): a spike in any epoch, not just the ends.
    peaks: pd.Series | None = None


END_LAYER_COLUMNS = (
    "grad_norm",
    "grad_max_abs",
    "act_std",
    "saturated_frac",
    "dead_frac",
    "finite_max_abs",  # the badge names an explosion hidden inside a diverged epoch
    "finite_first_max_abs",  # ... against the layer's own first step
)
END_EPOCH_COLUMNS = ("train_loss", "test_loss", "test_acc", "pred_std")


def _end_epochs(run_ids: Sequence[str] | None = None) -> Subquery:
    """(run_id, epoch) of every run's first and last recorded epoch (its `epochs_done`).

    Joined to the per-epoch tables, this drives primary-key lookups, so the cost follows the
    number of runs, not the size of the tables. (Written as a join on `epoch = 1 OR epoch =
    epochs_done`, SQLite's planner scans all of layer_stats instead.)
    """
    first = select(_R.id.label("run_id"), literal(1).label("epoch"))
    last = select(_R.id, _R.epochs_done).where(_R.epochs_done > 1)
    if run_ids is not None:
        first, last = first.where(_R.id.in_(run_ids)), last.where(_R.id.in_(run_ids))
    return union_all(first, last).subquery("ends")


def run_ends(engine: Engine, run_ids: Sequence[str] | None = None) -> RunEnds:
    """First- and last-epoch rows of every run (or of `run_ids` only: one page of the Runs
    table, a few hundred ids at most), read by primary key (no scan of the epochs in between);
    `epochs` keeps each run's last epoch only."""
    ends = _end_epochs(run_ids)
    layer_cols = [_L.run_id, _L.epoch, _L.layer, *[getattr(_L, c) for c in END_LAYER_COLUMNS]]
    layer_stmt = (
        select(*layer_cols)
        .select_from(ends)
        .join(_L, and_(_L.run_id == ends.c.run_id, _L.epoch == ends.c.epoch))
    )
    epoch_cols = [_E.run_id, _E.epoch, *[getattr(_E, c) for c in END_EPOCH_COLUMNS]]
    epoch_stmt = (
        select(*epoch_cols)
        .select_from(ends)
        .join(_E, and_(_E.run_id == ends.c.run_id, _E.epoch == ends.c.epoch))
    )
    layers = _frame(
        _read(layer_stmt, engine, plain=True),
        ("run_id", "epoch", "layer", *END_LAYER_COLUMNS),
        floats=END_LAYER_COLUMNS,
    )
    epochs = _frame(
        _read(epoch_stmt, engine, plain=True),
        ("run_id", "epoch", *END_EPOCH_COLUMNS),
        floats=END_EPOCH_COLUMNS,
    )
    last = epochs["epoch"].eq(epochs.groupby("run_id")["epoch"].transform("max"))
    warned = warning_summary(engine)  # one grouped pass over run_warnings, then cut
    if run_ids is not None:
        warned = warned[warned["run_id"].isin(run_ids)].reset_index(drop=True)
    peak_stmt = select(_R.id, _R.peak_grad).where(_R.peak_grad.is_not(None))
    if run_ids is not None:
        peak_stmt = peak_stmt.where(_R.id.in_(run_ids))
    peaks = _frame(_read(peak_stmt, engine, plain=True), ("run_id", "peak_grad"), ("peak_grad",))
    return RunEnds(
        layers,
        epochs[last].reset_index(drop=True),
        warned,
        facts(engine, run_ids),
        peaks.set_index("run_id")["peak_grad"],
    )


def facts(engine: Engine, run_ids: Sequence[str] | None = None) -> dict[str, dict]:
    """What each custom run's model contains, its backward order and its probe's outcome
    (config.model.facts, kept by gradscope.api.insight): the diagnosis reads them."""
    stmt = select(_R.id, _R.config).where(_R.arch == CUSTOM_ARCH)
    if run_ids is not None:
        stmt = stmt.where(_R.id.in_(run_ids))
    found = {}
    for run_id, config in _read(stmt, engine):
        model = config.get("model") if isinstance(config, dict) else None
        kept = model.get("facts") if isinstance(model, dict) else None
        if isinstance(kept, dict):
            found[run_id] = kept
    return found


# -- the runs being compared ----------------------------------------------------------------------


def _seed_text(seed: object) -> str:
    """The label's seed part (" s3"); nothing for a run without one (an API run given no seed)."""
    return "" if seed is None or pd.isna(seed) else f" s{seed}"  # type: ignore[arg-type]


def run_labels(frame: pd.DataFrame) -> dict[str, str]:
    """Readable, unique legend labels: the run's name (else arch, depth, seed) and a short id,
    longer where two would collide. `frame` has id, name, arch, depth, seed."""
    base = [
        (name if isinstance(name, str) and name else f"{arch} d{depth}{_seed_text(seed)}")
        for name, arch, depth, seed in zip(
            frame["name"], frame["arch"], frame["depth"], frame["seed"], strict=True
        )
    ]
    ids = list(frame["id"])
    for width in (4, 8, 36):
        labels = [f"{b} · {i[:width]}" for b, i in zip(base, ids, strict=True)]
        if len(set(labels)) == len(labels):
            break
    return dict(zip(ids, labels, strict=True))


def selected_runs(engine: Engine, run_ids: Sequence[str]) -> pd.DataFrame:
    """The given runs (those that exist), in the order given, with their full config."""
    ids = list(dict.fromkeys(run_ids))
    if not ids:
        return _frame([], (*RUN_COLUMNS, "config", "attempts"))
    cols = [getattr(_R, c) for c in RUN_COLUMNS]
    rows = _read(select(*cols, _R.config, _R.attempts).where(_R.id.in_(ids)), engine)
    order = {run_id: i for i, run_id in enumerate(ids)}
    rows.sort(key=lambda row: order[row[0]])  # before the frame: a pandas sort costs ~2 ms
    frame = _frame(rows, (*RUN_COLUMNS, "config", "attempts"), floats=("final_test_acc",))
    _utc(frame, "created_at", "finished_at")
    return frame


def epochs(engine: Engine, labels: Labels) -> pd.DataFrame:
    """Per-epoch metrics of the labelled runs: run_id, run_label, epoch and EPOCH_COLUMNS
    (first_nonfinite_step is NaN where every step was finite, or not recorded)."""
    names = EPOCH_COLUMNS
    stmt = (
        select(_E.run_id, _E.epoch, *[getattr(_E, c) for c in names])
        .where(_E.run_id.in_(list(labels)))
        .order_by(_E.run_id, _E.epoch)  # the primary key's order: free
    )
    return _per_run_frame(_read(stmt, engine, plain=True), labels, ("epoch",), names)


def layer_stats(engine: Engine, labels: Labels) -> pd.DataFrame:
    """Per-epoch, per-layer statistics (no histograms): run_id, run_label, epoch, layer,
    STAT_COLUMNS."""
    fields = STAT_COLUMNS
    cols = [_L.run_id, _L.epoch, _L.layer, *[getattr(_L, c) for c in fields]]
    stmt = (
        select(*cols)
        .where(_L.run_id.in_(list(labels)))
        .order_by(_L.run_id, _L.epoch, _L.layer)  # the primary key's order: free
    )
    return _per_run_frame(_read(stmt, engine, plain=True), labels, ("epoch", "layer"), fields)


def metrics(engine: Engine, labels: Labels) -> pd.DataFrame:
    """Free metrics (`run.log`) of the labelled runs: run_id, run_label, name, step, epoch
    (float: NULL as NaN), value (NULL as NaN), per run and name in logging order."""
    stmt = (
        select(_M.run_id, _M.name, _M.step, _M.epoch, _M.value)
        .where(_M.run_id.in_(list(labels)))
        .order_by(_M.run_id, _M.name, _M.id)
    )
    frame = _frame(_read(stmt, engine), ("run_id", "name", "step", "epoch", "value"))
    for name in ("step", "epoch", "value"):
        frame[name] = pd.to_numeric(frame[name], errors="coerce").astype(np.float64)
    return _label_runs(frame, labels)


def histograms(engine: Engine, labels: Labels, epoch: int, layer: int) -> pd.DataFrame:
    """Gradient histograms (log10|g|) of one layer at one epoch, one row per run and bin:
    run_id, run_label, bin_left, bin_right, count, fraction, plus zero_fraction and
    nonfinite_fraction (entries that no log bin can show). Fractions are of all entries."""
    stmt = select(_L.run_id, _L.grad_hist).where(
        _L.run_id.in_(list(labels)), _L.epoch == epoch, _L.layer == layer, _L.grad_hist.is_not(None)
    )
    rows = _read(stmt, engine, plain=True)
    names = ("run_id", "bin_left", "bin_right", "count", "fraction")
    names = (*names, "zero_fraction", "nonfinite_fraction")
    if not rows:
        return _label_runs(_frame([], names), labels)
    run_ids, blobs = zip(*rows, strict=True)
    joined = b"".join(bytes(blob[: 4 * HIST_SLOTS]) for blob in blobs)  # one frombuffer
    counts = np.frombuffer(joined, dtype="<i4").reshape(len(rows), HIST_SLOTS)
    totals = counts.sum(axis=1, keepdims=True).astype(float)
    fractions = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    left = HIST_LOG10_MIN + HIST_WIDTH * np.arange(HIST_BINS)
    n = len(rows)
    frame = pd.DataFrame(
        {
            **_label_blocks(run_ids, [HIST_BINS] * n, labels),
            "bin_left": np.tile(left, n),
            "bin_right": np.tile(left + HIST_WIDTH, n),
            "count": counts[:, :HIST_BINS].ravel().astype("int64"),
            "fraction": fractions[:, :HIST_BINS].ravel(),
            "zero_fraction": np.repeat(fractions[:, HIST_BINS], HIST_BINS),
            "nonfinite_fraction": np.repeat(fractions[:, HIST_BINS + 1], HIST_BINS),
        }
    )
    return frame


@dataclass(frozen=True)
class DecisionMaps:
    """Decision-boundary data of the labelled runs that have it (two-feature datasets)."""

    grid: pd.DataFrame  # run_id, run_label, epoch, x, y, prob
    points: pd.DataFrame  # run_id, run_label, x, y, label


def decision_maps(engine: Engine, labels: Labels, epoch: int) -> DecisionMaps:
    """Each run's probability grid at the latest recorded grid epoch at or before `epoch`
    (grids are kept at a few epochs only), and its test points."""
    ids = list(labels)
    latest = (
        select(DecisionGridModel.run_id, func.max(DecisionGridModel.epoch).label("epoch"))
        .where(DecisionGridModel.run_id.in_(ids), DecisionGridModel.epoch <= epoch)
        .group_by(DecisionGridModel.run_id)
        .subquery()
    )
    g = DecisionGridModel
    grid_rows = _read(
        select(g.run_id, g.epoch, g.size, g.x_min, g.x_max, g.y_min, g.y_max, g.probs).join(
            latest, and_(latest.c.run_id == g.run_id, latest.c.epoch == g.epoch)
        ),
        engine,
        plain=True,  # numbers and a blob
    )
    # Whole columns at once: one frombuffer for all the maps' float16 blobs joined, the ids
    # and labels through integer codes. With 50 maps (115,200 cells) per-run frames and a
    # string per cell cost ~10x the read.
    if grid_rows:
        run_ids, epochs_, sizes, x_min, x_max, y_min, y_max, blobs = zip(*grid_rows, strict=True)
        cells = [s * s for s in sizes]
        joined = b"".join(bytes(b[: 2 * n]) for b, n in zip(blobs, cells, strict=True))
        axes: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}  # runs mostly share one extent
        for extent in zip(sizes, x_min, x_max, y_min, y_max, strict=True):
            if extent not in axes:
                size, x0, x1, y0, y1 = extent  # row-major [y, x], like np.meshgrid(x, y)
                axes[extent] = (
                    np.tile(np.linspace(x0, x1, size), size),
                    np.repeat(np.linspace(y0, y1, size), size),
                )
        xs = [axes[e][0] for e in zip(sizes, x_min, x_max, y_min, y_max, strict=True)]
        ys = [axes[e][1] for e in zip(sizes, x_min, x_max, y_min, y_max, strict=True)]
        grid = pd.DataFrame(
            {
                **_label_blocks(run_ids, cells, labels),
                "epoch": np.repeat(np.array(epochs_, dtype=np.int64), cells),
                "x": np.concatenate(xs),
                "y": np.concatenate(ys),
                "prob": np.frombuffer(joined, dtype="<f2").astype(float),
            }
        )
    else:
        grid = _label_runs(_frame([], ("run_id", "epoch", "x", "y", "prob")), labels)
    p = RunPointsModel
    point_rows = _read(select(p.run_id, p.n, p.points).where(p.run_id.in_(ids)), engine, plain=True)
    if point_rows:
        run_ids, counts, blobs = zip(*point_rows, strict=True)
        joined = b"".join(bytes(b[: 12 * n]) for b, n in zip(blobs, counts, strict=True))
        xyl = np.frombuffer(joined, dtype="<f4").reshape(-1, 3).astype(float)
        pts = pd.DataFrame(
            {
                **_label_blocks(run_ids, counts, labels),
                "x": xyl[:, 0],
                "y": xyl[:, 1],
                "label": xyl[:, 2].astype(np.int64),
            }
        )
    else:
        pts = _label_runs(_frame([], ("run_id", "x", "y", "label")), labels)
    return DecisionMaps(grid, pts)


def sweeps(engine: Engine) -> pd.DataFrame:
    """One row per sweep, newest first: sweep_id, name, runs, finished (runs in a finished
    status), created (its first run's creation). Grouped in the database over the sweep_id
    index, so the cost follows the runs in sweeps, not every run."""
    finished = func.sum(case((_R.status.in_(FINISHED_STATUSES), 1), else_=0))
    created = func.min(_R.created_at)
    stmt = (
        select(_R.sweep_id, func.min(_R.sweep_name), func.count(), finished, created)
        .where(_R.sweep_id.is_not(None))
        .group_by(_R.sweep_id)
        .order_by(created.desc(), _R.sweep_id)
    )
    frame = _frame(_read(stmt, engine), ("sweep_id", "name", "runs", "finished", "created"))
    frame = frame.astype({"runs": "int64", "finished": "int64"})
    _utc(frame, "created")
    return frame


def sweep_configs(engine: Engine, sweep_id: str) -> dict[str, dict]:
    """run id -> config of every run in a sweep (one read over the sweep_id index)."""
    rows = _read(select(_R.id, _R.config).where(_R.sweep_id == sweep_id), engine, plain=True)
    # Plain: PostgreSQL's driver hands back JSON parsed, SQLite's the text (parsed here, in one
    # pass, without SQLAlchemy's per-row result processing).
    return {
        run_id: json.loads(config) if isinstance(config, str | bytes) else config
        for run_id, config in rows
    }


def sweep_summary(engine: Engine, sweep_id: str) -> pd.DataFrame:
    """One row per run of a sweep: arch, depth, seed, grad_ratio_log10 (first-layer over
    output-layer grad norm at epoch 1; -inf when the first layer's gradient underflowed to 0)
    and final_test_acc (NaN until the run finishes)."""
    rows = _read(
        select(_R.id, _R.arch, _R.depth, _R.seed, _R.final_test_acc, _L.layer, _L.grad_norm)
        .outerjoin(_L, and_(_L.run_id == _R.id, _L.epoch == 1))
        .where(_R.sweep_id == sweep_id)
        .order_by(_R.id, _L.layer),
        engine,
        plain=True,  # numbers and text only
    )
    # One pass over the rows, ordered by run and layer: a run's first row holds its first
    # layer, its last row its output layer (a NaN norm stays NaN: never the next layer's).
    # A pandas groupby with idxmin/idxmax took ~25 ms for a 1,000-run sweep; this ~3 ms.
    runs: dict[str, list] = {}
    for run_id, arch, depth, seed, acc, layer, norm in rows:
        if run_id not in runs:
            runs[run_id] = [arch, depth, seed, acc, math.nan, math.nan, False]
        if layer is not None:
            kept = runs[run_id]
            if not kept[6]:
                kept[4], kept[6] = _float(norm), True
            kept[5] = _float(norm)
    values = list(runs.values())
    first = np.array([v[4] for v in values], dtype=float)
    last = np.array([v[5] for v in values], dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.log10(first / last)
    out = pd.DataFrame(
        {
            "run_id": pd.array(list(runs), dtype="str"),
            "arch": pd.array([v[0] for v in values], dtype="str"),
            "depth": np.array([v[1] for v in values], dtype=np.int64),
            "seed": np.array([v[2] for v in values], dtype=np.int64),
            "grad_ratio_log10": ratio,
            "final_test_acc": np.array([_float(v[3]) for v in values], dtype=float),
        }
    )
    return out


def _float(value: object) -> float:
    return math.nan if value is None else float(value)  # type: ignore[arg-type]
