"""The dashboard's only door to the database: cached reads from `gradscope.db.frames`, and the few
writes the pages make (queue runs and sweeps, cancel, delete, annotate and import runs).

Writes: every one passes `_writable()`, the one guard, before it does anything else. It refuses
(`WriteRefused`, one plain line) on a read-only dashboard (gradscope.dashboard.access) and when the
SQLite file was deleted or replaced since the dashboard opened it. A read-only dashboard also
opens the database read-only, so a write that somehow slipped past the guard still fails in the
driver; and its pages draw no control that writes (`writes_allowed()`).

Caching: the engine is a `st.cache_resource`; reads are `st.cache_data` keyed by the database
and a cheap fingerprint of the runs table (`version()`, read once per script run), so
they are recomputed exactly when runs change: a run is queued, starts, records an epoch,
finishes, is cancelled or deleted. Compare-page reads are keyed by the chosen runs' own progress,
so an epoch landing in another run does not throw them away.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import streamlit as st
from sqlalchemy import Engine
from sqlalchemy.engine import make_url
from streamlit.runtime.scriptrunner import get_script_run_ctx

from gradscope.dashboard import access, tables
from gradscope.db import frames
from gradscope.db.engine import display_url, make_engine, resolve_db, to_url
from gradscope.db.errors import StorageError
from gradscope.db.share.source import DASHBOARD_UPLOAD_MB
from gradscope.db.warnings import warnings_of
from gradscope.vocab.fields import ACTIVE_STATUSES
from gradscope.vocab.labels import short_labels
from gradscope.vocab.protocol import WORKER_PID_ENV
from gradscope.vocab.records import RunSpec

if TYPE_CHECKING:
    from gradscope.db.share.report import ImportReport

# The picture the project exists to show: same net, three architectures (see README).
CLASSIC_COMPARISON = {
    "dataset": "moons",
    "depth": 10,
    "width": 32,
    "optimizer": "adam",
    "lr": 1e-3,
    "epochs": 20,
}
CLASSIC_ARCHS = ("sigmoid", "relu", "resnet")
CLASSIC_SWEEP_NAME = "classic comparison"


def database() -> str:
    """The database this dashboard shows: $GRADSCOPE_DB (set by `gradscope dashboard --db`)
    or ./gradscope.db."""
    return resolve_db(None)


def database_for_people() -> str:
    return display_url(database())


class WriteRefused(StorageError):
    """A write this dashboard will not make (read-only, or its database file was replaced);
    the message is one line saying why and that nothing was written."""


def writes_allowed() -> bool:
    """Whether this dashboard's visitors may write: pages draw write controls only then."""
    return access.writes_allowed()


@st.cache_resource(show_spinner=False)
def _connected(db: str, read_only: bool) -> tuple[Engine, tuple[int, int] | None]:
    """The engine, and the SQLite file's identity (st_dev, st_ino) when it was opened."""
    # A read-only dashboard opens the database read-only (a missing file is not created). A
    # file the dashboard can't write (read-only mount) is opened read-only too: browsing works.
    engine = make_engine(db, read_only=True if read_only else None)
    return engine, _file_identity(db)


def _connection(db: str) -> tuple[Engine, tuple[int, int] | None]:
    return _connected(db, not access.writes_allowed())


def _engine(db: str) -> Engine:
    return _connection(db)[0]


def engine() -> Engine:
    return _engine(database())


def _sqlite_file(db: str) -> Path | None:
    url = make_url(to_url(db))
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def _file_identity(db: str) -> tuple[int, int] | None:
    path = _sqlite_file(db)
    if path is None:
        return None
    try:
        info = path.stat()
    except OSError:
        return None
    return info.st_dev, info.st_ino


def file_changed() -> str | None:
    """Why the database file this dashboard opened is no longer the one at its path (deleted,
    or replaced by another file, e.g. `mv other.db runs.db`), or None. One stat() call.

    Its open connections still read the old file, and anything written would land in a file
    nobody else can open: the pages say so and writes are refused until `reconnect()`."""
    db = database()
    path = _sqlite_file(db)
    if path is None:
        return None
    opened = _connection(db)[1]
    now = _file_identity(db)
    if now is None:
        return f"The database file {path} was deleted after this dashboard opened it."
    if opened is not None and now != opened:
        return (
            f"The database file {path} was replaced by another file after this dashboard opened it."
        )
    return None


def reconnect() -> None:
    """Forget the engine and every cached read; the next page run opens the file at the path
    now (a deleted one is created anew, empty, unless the dashboard is read-only)."""
    db = database()
    engine, _ = _connection(db)
    engine.dispose()
    _connected.clear()
    clear_runs_frames()
    st.cache_data.clear()
    _forget_version()


READ_ONLY_REFUSAL = (
    "This dashboard is read-only (it is reachable from other machines): nothing was written. "
    "Start it with --allow-writes to let visitors queue, cancel, edit, delete and import runs."
)


def _writable() -> Engine:
    """The one write guard: the engine for a write, or WriteRefused on a read-only dashboard
    (gradscope.dashboard.access) and when the file was deleted or replaced. Every write
    function below calls it first, before checking or reading anything."""
    if not access.writes_allowed():
        raise WriteRefused(READ_ONLY_REFUSAL)
    _forget_version()  # what this write changes shows in this script run's later reads
    changed = file_changed()
    if changed:
        raise WriteRefused(
            f"{changed} Nothing was written. Press Reconnect (top of the page) to open the file "
            "that is there now."
        )
    return engine()


# version() read once per script run: a page asks for it up to 8 times (the sidebar's queue, the
# runs list, the selection, the warnings), and each read scans the runs table (~65 ms at 100,000
# runs). Keyed by an object Streamlit makes anew for every script run, a fragment's rerun
# included (ScriptRunContext.reset() creates the run's ParallelFragmentCoordinator), held weakly
# so finished runs drop out. Where there is no such object (outside a script run, or a
# Streamlit without it) nothing is kept and every call reads: slower, never stale.
_VERSION_THIS_RUN: weakref.WeakKeyDictionary[object, tuple[str, ...]] = weakref.WeakKeyDictionary()


def _this_script_run() -> object | None:
    ctx = get_script_run_ctx(suppress_warning=True)
    return getattr(ctx, "parallel_coordinator", None) if ctx is not None else None


def _forget_version() -> None:
    """After a write in this script run: the next `version()` reads the database again."""
    run = _this_script_run()
    if run is not None:
        _VERSION_THIS_RUN.pop(run, None)


def version() -> tuple[str, ...]:
    """Changes whenever any run changes (see `gradscope.db.frames.data_version`): read once per
    script run (full or fragment) and again after this dashboard writes."""
    run = _this_script_run()
    if run is not None and run in _VERSION_THIS_RUN:
        return _VERSION_THIS_RUN[run]
    found = frames.data_version(engine())
    if run is not None:
        _VERSION_THIS_RUN[run] = found
    return found


# -- the runs list ------------------------------------------------------------------------------


# The frames of every run are kept once per data version as shared objects (cache_resource) and
# handed out as shallow copies: st.cache_data would unpickle a fresh copy on every call, ~0.4 s
# for 100,000 runs each time, several times per page (benchmarks/dashboard.py --scale). pandas
# copy-on-write keeps a caller's edits to its copy away from the shared frame.


@st.cache_resource(show_spinner=False, max_entries=4)
def _runs_shared(db: str, data_version: tuple[str, ...]) -> pd.DataFrame:
    return newest_first(frames.runs(_engine(db)))


def _runs(db: str, data_version: tuple[str, ...]) -> pd.DataFrame:
    return _runs_shared(db, data_version).copy(deep=False)


def newest_first(runs: pd.DataFrame) -> pd.DataFrame:
    """The latest batch first, and the runs of a batch in the order they were created (`seq`),
    as the Runs page says (gradscope.db.queries.NEWEST_FIRST for the CLI). A batch is the runs
    created at one instant, or a whole sweep (queued in groups, it spans a few milliseconds)."""
    sweep_start = runs.groupby("sweep_id")["created_at"].transform("min")
    batch = sweep_start.where(runs["sweep_id"].notna(), runs["created_at"])
    order = runs.assign(_batch=batch).sort_values(
        ["_batch", "seq"], ascending=[False, True], kind="stable", na_position="last"
    )
    return order.drop(columns="_batch").reset_index(drop=True)


@st.cache_resource(show_spinner=False, max_entries=4)
def _runs_table_shared(db: str, data_version: tuple[str, ...]) -> pd.DataFrame:
    runs = _runs(db, data_version)
    ends = frames.run_ends(_engine(db))
    found = tables.badges(runs, ends.layers, ends.epochs, ends.warnings, ends.facts, ends.peaks)
    return tables.runs_table(runs, found, ends.warnings)


def _runs_table(db: str, data_version: tuple[str, ...]) -> pd.DataFrame:
    return _runs_table_shared(db, data_version).copy(deep=False)


def runs(data_version: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Every run (gradscope.db.frames.runs), newest first, runs created together in creation
    order (`newest_first`); at `data_version` when the caller has read one (`version()` scans
    the runs table: ~60 ms at 100,000 runs)."""
    db = database()
    return _runs(db, data_version or version())


def runs_table(data_version: tuple[str, ...] | None = None) -> pd.DataFrame:
    """The Runs page table with diagnosis badges, indexed by run id (at `data_version`, a
    `version()` the caller read, so it can say which state it drew)."""
    db = database()
    return _runs_table(db, data_version or version())


@st.cache_resource(show_spinner=False, max_entries=4)
def _runs_listing_shared(db: str, data_version: tuple[str, ...]) -> pd.DataFrame:
    runs = _runs(db, data_version)
    none = pd.Series("empty", index=runs["id"])  # badges come per page (`runs_page`)
    return tables.runs_table(runs, none)


def clear_runs_frames() -> None:
    """Forget the shared frames of every run (st.cache_data.clear() does not reach them)."""
    for shared in (_runs_shared, _runs_table_shared, _runs_listing_shared):
        shared.clear()


def runs_listing(data_version: tuple[str, ...] | None = None) -> pd.DataFrame:
    """`runs_table` without the diagnosis and warnings (empty): every run, for filtering,
    sorting and paging, without reading any epoch. The page shown gets them from `runs_page`."""
    return _runs_listing_shared(database(), data_version or version()).copy(deep=False)


@st.cache_data(show_spinner=False, max_entries=16)
def _runs_page(db: str, run_ids: tuple[str, ...], data_version: tuple[str, ...]) -> pd.DataFrame:
    runs = _runs(db, data_version).set_index("id", drop=False)
    chosen = runs.loc[[i for i in run_ids if i in runs.index]].reset_index(drop=True)
    ends = frames.run_ends(_engine(db), run_ids)
    found = tables.badges(chosen, ends.layers, ends.epochs, ends.warnings, ends.facts, ends.peaks)
    return tables.runs_table(chosen, found, ends.warnings)


def runs_page(run_ids: Sequence[str], data_version: tuple[str, ...] | None = None) -> pd.DataFrame:
    """`runs_table` rows of these runs (one page), in this order, with their diagnosis and
    warnings: only these runs' first and last epochs are read."""
    return _runs_page(database(), tuple(run_ids), data_version or version())


# The data version the Runs table was drawn with; set by the Runs page and cleared by the router
# at every full run, so it is present only while Runs is the page shown. The sidebar's live queue
# reruns the whole app when the database has moved past it: the queue and the table then show
# the same state, from the same cached frame, in the same rerun.
TABLE_VERSION_KEY = "runs_table_version"


# Whether the page this script run draws is the Runs page; set by the router at every full run,
# before the sidebar draws the queue (a fragment's rerun keeps the page of its full run).
RUNS_PAGE_SHOWN_KEY = "runs_page_shown"


@st.cache_data(show_spinner=False, max_entries=4)
def _active_runs(db: str, data_version: tuple[str, ...]) -> pd.DataFrame:
    return frames.queue(_engine(db))


def queue(data_version: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Queued and running runs (running first, then in creation order).

    Beside the Runs table (`RUNS_PAGE_SHOWN_KEY`), cut from the same cached runs frame the table
    is made of, so the two never disagree about a run's status or progress (re-reading every
    run when an epoch lands costs what the table already pays). On the other pages, read by
    itself over the status index: reading all 100,000 runs for a queue of a few would be most
    of a Sweeps or Compare page's first render."""
    data_version = data_version or version()
    if not st.session_state.get(RUNS_PAGE_SHOWN_KEY, True):
        return _active_runs(database(), data_version)
    frame = _runs(database(), data_version)
    active = frame[frame["status"].isin(ACTIVE_STATUSES)]
    running_first = (active["status"] != "running").astype(int).rename("_order")
    ordered = pd.concat([active, running_first], axis=1).sort_values(
        ["_order", "created_at", "seq", "id"]
    )
    return ordered.drop(columns="_order").reset_index(drop=True)


# -- the runs being compared --------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """The chosen runs that exist, in the order chosen, and a key that changes with them."""

    runs: pd.DataFrame  # gradscope.db.frames.selected_runs plus run_label
    labels: tuple[tuple[str, str], ...]  # (run_id, run_label)
    key: tuple[tuple[str, int, str], ...]  # (run_id, epochs_done, status)

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)


@st.cache_data(show_spinner=False, max_entries=32)
def _runs_of(db: str, run_ids: tuple[str, ...], data_version: tuple[str, ...]) -> pd.DataFrame:
    return frames.runs(_engine(db), run_ids)


def _known(run_ids: Sequence[str]) -> pd.DataFrame:
    """Rows of the runs frame for these ids, in order; unknown ids (deleted runs, a mistyped
    link) are dropped. Read by id: the Compare page never needs the list of every run (a
    second or more to read at 100,000 runs) to show a hundred of them."""
    ids = tuple(dict.fromkeys(run_ids))
    known = _runs_of(database(), ids, version()).set_index("id")
    return known.loc[[i for i in ids if i in known.index]].reset_index()


def runs_of(run_ids: Sequence[str]) -> pd.DataFrame:
    """Rows of `runs()` for these runs (those that exist), in the order given."""
    return _known(run_ids)


def has_runs() -> bool:
    """Whether the database holds any run (the count inside `version()`: no read of its own)."""
    return version()[0] != "0"


@st.cache_data(show_spinner=False, max_entries=4)
def _newest_runs(db: str, n: int, data_version: tuple[str, ...]) -> pd.DataFrame:
    return newest_first(frames.runs(_engine(db), newest=n))


def newest_runs(n: int) -> pd.DataFrame:
    """The newest `n` runs as `runs()` lists them (a run picker's options), read alone."""
    return _newest_runs(database(), n, version())


@st.cache_data(show_spinner=False, max_entries=4)
def _known_tags(db: str, data_version: tuple[str, ...]) -> list[str]:
    return frames.known_tags(_engine(db))


def known_tags() -> list[str]:
    """Every tag some run carries, sorted (the tag editor's choices)."""
    return _known_tags(database(), version())


def labels_of(rows: pd.DataFrame) -> dict[str, str]:
    """Legend labels of these rows of `runs()`, in their order (no read)."""
    return frames.run_labels(rows)


def selection(run_ids: Sequence[str]) -> Selection:
    """The chosen runs, labelled by what tells them apart (gradscope.vocab.labels: a name a
    person gave, else the settings that differ), with their configs. Unknown ids are dropped."""
    chosen = _known(run_ids)
    key = tuple(
        (i, int(d), str(s))
        for i, d, s in zip(chosen["id"], chosen["epochs_done"], chosen["status"], strict=True)
    )
    meta = _selected_runs(database(), key)
    names = short_labels(meta["id"], meta["name"], meta["sweep_name"], meta["config"])
    meta.insert(1, "run_label", meta["id"].map(names))
    return Selection(meta, tuple(names.items()), key)


@st.cache_data(show_spinner=False, max_entries=16)
def _selected_runs(db: str, key: tuple) -> pd.DataFrame:
    return frames.selected_runs(_engine(db), [run_id for run_id, *_ in key])


@st.cache_data(show_spinner=False, max_entries=16)
def _epochs(db: str, labels: tuple, key: tuple) -> pd.DataFrame:
    return frames.epochs(_engine(db), dict(labels))


@st.cache_data(show_spinner=False, max_entries=16)
def _layer_stats(db: str, labels: tuple, key: tuple) -> pd.DataFrame:
    return frames.layer_stats(_engine(db), dict(labels))


@st.cache_data(show_spinner=False, max_entries=64)
def _histograms(db: str, labels: tuple, key: tuple, epoch: int, layer: int) -> pd.DataFrame:
    return frames.histograms(_engine(db), dict(labels), epoch, layer)


@st.cache_data(show_spinner=False, max_entries=64)
def _decision_maps(db: str, labels: tuple, key: tuple, epoch: int) -> frames.DecisionMaps:
    return frames.decision_maps(_engine(db), dict(labels), epoch)


def epochs(sel: Selection) -> pd.DataFrame:
    return _epochs(database(), sel.labels, sel.key)


@st.cache_data(show_spinner=False, max_entries=16)
def _metrics(db: str, labels: tuple, key: tuple) -> pd.DataFrame:
    return frames.metrics(_engine(db), dict(labels))


def metrics(sel: Selection) -> pd.DataFrame:
    """The free metrics (`run.log`) of the chosen runs (gradscope.db.frames.metrics)."""
    return _metrics(database(), sel.labels, sel.key)


def layer_stats(sel: Selection) -> pd.DataFrame:
    return _layer_stats(database(), sel.labels, sel.key)


@st.cache_data(show_spinner=False, max_entries=16)
def _warnings(db: str, run_ids: tuple[str, ...], data_version: tuple[str, ...]) -> pd.DataFrame:
    return warnings_of(_engine(db), run_ids)


def warnings(sel: Selection) -> pd.DataFrame:
    """The chosen runs' live warnings (gradscope.db.warnings.warnings_of), read again as they
    arrive: `version()` counts them, and a warning lands mid-epoch."""
    return _warnings(database(), tuple(sel.label_map), version())


def histograms(sel: Selection, epoch: int, layer: int) -> pd.DataFrame:
    return _histograms(database(), sel.labels, sel.key, epoch, layer)


def decision_maps(sel: Selection, epoch: int) -> frames.DecisionMaps:
    return _decision_maps(database(), sel.labels, sel.key, epoch)


@st.cache_data(show_spinner=False, max_entries=16)
def _sweep_summary(db: str, sweep_id: str, data_version: tuple[str, ...]) -> pd.DataFrame:
    return frames.sweep_summary(_engine(db), sweep_id)


def sweep_summary(sweep_id: str) -> pd.DataFrame:
    return _sweep_summary(database(), sweep_id, version())


@st.cache_data(show_spinner=False, max_entries=16)
def _sweeps(db: str, data_version: tuple[str, ...]) -> pd.DataFrame:
    return frames.sweeps(_engine(db))


def sweeps() -> pd.DataFrame:
    """Every sweep, newest first, with its run counts (gradscope.db.frames.sweeps): the Sweeps
    page's picker, without reading every run."""
    return _sweeps(database(), version())


@st.cache_data(show_spinner=False, max_entries=16)
def _sweep_configs(db: str, sweep_id: str, data_version: tuple[str, ...]) -> dict[str, dict]:
    return frames.sweep_configs(_engine(db), sweep_id)


def sweep_configs(sweep_id: str) -> dict[str, dict]:
    """run id -> config of a sweep's runs."""
    return _sweep_configs(database(), sweep_id, version())


# -- writes -------------------------------------------------------------------------------------


def queue_run(values: Mapping[str, Any]) -> str:
    """Queue one run from the form's values; returns its id. Raises ConfigError (nothing
    written) when they are invalid (gradscope.db.lifecycle.create_runs validates) or over the
    parameter
    budget (gradscope.vocab.budget)."""
    from gradscope.db.lifecycle import create_runs
    from gradscope.vocab.budget import check_budget
    from gradscope.vocab.config import make_config

    target = _writable()
    check_budget(make_config(dict(values)))
    [run_id] = create_runs(target, [RunSpec(dict(values))])
    return run_id


def queue_sweep(values: Mapping[str, str], name: str | None = None) -> list[str]:
    """Queue a grid (each value a comma list) as one sweep, all or nothing (gradscope.vocab.sweep).

    Raises ConfigError naming every bad value before anything is written.
    """
    from gradscope.db.lifecycle import queue_sweep as queue_plan
    from gradscope.vocab.sweep import check_plan_budget, plan_sweep

    target = _writable()
    plan = plan_sweep(values, name=name)
    check_plan_budget(plan)
    return queue_plan(target, plan)


def queue_classic_comparison() -> list[str]:
    """Queue sigmoid, relu and resnet on moons, depth 10, width 32, Adam 1e-3, 20 epochs."""
    _writable()
    grid = {k: str(v) for k, v in CLASSIC_COMPARISON.items()} | {"arch": ",".join(CLASSIC_ARCHS)}
    return queue_sweep(grid, CLASSIC_SWEEP_NAME)


def cancel_runs(run_ids: Sequence[str]) -> dict[str, str]:
    """Per run: "cancelled", "cancel requested", "already <status>" or "not found"."""
    from gradscope.db.lifecycle import cancel_runs as cancel

    target = _writable()
    return cancel(target, run_ids)


def delete_runs(run_ids: Sequence[str]) -> int:
    from gradscope.db.lifecycle import delete_runs as delete

    target = _writable()
    return delete(target, run_ids)


def _annotated() -> None:
    """After an edit here: the runs list is read again at once (the fingerprint in
    `version()` sees most edits, not a rename to a name of the same length)."""
    clear_runs_frames()
    for read in (_runs_page, _runs_of, _newest_runs, _known_tags):
        read.clear()
    _forget_version()


def annotate_run(run_id: str, *, name: str | None, notes: str | None, tags: Sequence[str]) -> None:
    """Store a run's name, notes and tags as edited on a page, in one transaction
    (gradscope.db.annotate.edit_run checks them first; AnnotationError says what is wrong, and
    nothing is written then)."""
    from gradscope.db import annotate

    target = _writable()
    try:
        annotate.edit_run(target, run_id, name=name, notes=notes, tags=tags)
    finally:
        _annotated()


# -- the worker ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerStatus:
    local_pid: int | None  # the worker `gradscope dashboard` started, if it is alive
    live_workers: tuple[str, ...]  # workers with a fresh heartbeat on a running run
    queued: int
    running: int


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def worker_status() -> WorkerStatus:
    from gradscope.db.lifecycle import queue_status

    status = queue_status(engine())
    pid_text = os.environ.get(WORKER_PID_ENV, "")
    pid = int(pid_text) if pid_text.isdigit() and _alive(int(pid_text)) else None
    return WorkerStatus(pid, status.live_workers, status.queued, status.running)


# -- sharing (gradscope.db.share)
# -------------------------------------------------------------------------

# gradscope.db.share.source's dashboard upload limit; `gradscope dashboard` gives the server the
# same one.
MAX_UPLOAD_MB = DASHBOARD_UPLOAD_MB
UPLOAD_SUFFIXES = ("db", "sqlite", "sqlite3")


def export_db_bytes(run_ids: Sequence[str]) -> bytes:
    """A standalone gradscope database holding these runs."""
    from gradscope.db.share.export import export_runs_bytes

    return export_runs_bytes(engine(), run_ids)


def export_tables_zip(run_ids: Sequence[str]) -> bytes:
    """runs/epochs/layers/metrics as CSV files in a zip."""
    from gradscope.db.share.table_files import export_tables_zip as tables_zip

    return tables_zip(engine(), run_ids, "csv")


def import_db_bytes(content: bytes, filename: str, dry_run: bool = False) -> ImportReport:
    """Merge an uploaded run database (checked as untrusted); returns
    gradscope.db.share.report.ImportReport."""
    from gradscope.db.share.importing import import_bytes

    target = _writable()  # a dry run too: a read-only dashboard takes no uploads at all
    return import_bytes(target, content, filename, MAX_UPLOAD_MB * 2**20, dry_run)


# -- cure trials (gradscope.analysis.cures, gradscope.db.trials) --------------------------------


@st.cache_data(show_spinner=False, max_entries=16)
def _cure_trial(db: str, patient_id: str, data_version: tuple[str, ...]) -> Any:
    from gradscope.db.trials import trial_frames

    return trial_frames(_engine(db), patient_id)


def cure_trial(patient_id: str) -> Any:
    """The patient's latest cure trial as gradscope.db.trials.TrialFrames, or None; read again
    whenever runs change (its runs train)."""
    return _cure_trial(database(), patient_id, version())


def run_frames(run_id: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """One run's row (with config and error), epochs, layer statistics and live warnings."""
    sel = selection([run_id])
    errors = _known([run_id]).set_index("id")["error"]
    row = sel.runs.assign(error=sel.runs["id"].map(errors))
    return row, epochs(sel), layer_stats(sel), warnings(sel)


def queue_cures(patient: Mapping[str, Any], findings: Sequence[Any]) -> list[str]:
    """Queue the patient's cure trial (gradscope.analysis.cures.plan_cures) as one batched
    sweep; returns its run ids. Raises CureRefused or ConfigError (nothing written)."""
    from gradscope.analysis.cures import plan_cures
    from gradscope.db.lifecycle import queue_sweep as queue_plan
    from gradscope.vocab.sweep import check_plan_budget

    target = _writable()
    plan, _ = plan_cures(patient, findings)
    check_plan_budget(plan)
    return queue_plan(target, plan)
