"""The sidebar: the database in use, the worker, the live queue, and forms that queue runs."""

from __future__ import annotations

import functools
import typing
from collections import defaultdict

import streamlit as st

from gradscope.dashboard import access, db_gateway, view
from gradscope.dashboard.tables import escape_markdown
from gradscope.db.errors import StorageError
from gradscope.vocab.config import (
    BUILTIN_DATASETS,
    ConfigError,
    RunConfig,
    make_config,
)
from gradscope.vocab.csv_files import precheck
from gradscope.vocab.custom import run_progress

QUEUE_REFRESH_S = 2.0
QUEUE_SHOWN = 8
CSV_CHOICE = "csv file"
FORM_KEY = "new_run"  # widget keys are f"{FORM_KEY}_{field}"
SWEEP_KEY = "new_sweep"
NOTES_KEY = "new_run_outcome"  # what the last submit did, shown once by the form
SWEEP_NOTES_KEY = "new_sweep_outcome"
QUEUE_REFUSAL_KEY = "queue_refusal"  # a cancel the database refused, shown once by the queue


def render() -> None:
    with st.sidebar:
        st.caption("Database")
        st.code(db_gateway.database_for_people(), language=None, wrap_lines=True)
        _live_queue()
        if not db_gateway.writes_allowed():
            st.caption(
                "Read-only: this dashboard is reachable from other machines (start it with "
                "--allow-writes to queue runs here)."
            )
            return
        with st.expander("New run", icon=":material/add:"):
            new_run_form()
        with st.expander("New sweep", icon=":material/grid_view:"):
            sweep_form()


# -- worker and queue ---------------------------------------------------------------------------


def _cancel(run_id: str) -> None:
    """The cancel button's callback. A refusal is kept for the queue to show as one line (an
    exception raised in a callback would reach the page as a traceback)."""
    try:
        outcome = db_gateway.cancel_runs([run_id]).get(run_id, "not found")
    except StorageError as exc:
        st.session_state[QUEUE_REFUSAL_KEY] = exc
    else:
        st.toast(f"Run {run_id[:8]}: {outcome}")


@st.fragment(run_every=QUEUE_REFRESH_S)
@functools.partial(view.guarded, brief=True)
def _live_queue() -> None:
    """Refreshes itself every few seconds without rerunning the page."""
    data_version = db_gateway.version()
    drawn = st.session_state.get(db_gateway.TABLE_VERSION_KEY)
    if drawn is not None and drawn != data_version:
        # The Runs table shows an older state than this queue would: redraw both, from one read.
        st.rerun(scope="app")
    status = db_gateway.worker_status()
    if status.local_pid is not None:
        st.success(f"Worker alive (pid {status.local_pid})", icon=":material/memory:")
    elif status.live_workers:
        st.success(f"{len(status.live_workers)} worker(s) training", icon=":material/memory:")
    else:
        st.warning(
            "Worker not running: queued runs wait. Start one with `gradscope worker`.",
            icon=":material/pause_circle:",
        )
    if QUEUE_REFUSAL_KEY in st.session_state:
        view.refusal(st.session_state.pop(QUEUE_REFUSAL_KEY))
    queue = db_gateway.queue(data_version)
    running = int((queue["status"] == "running").sum())  # counted from the rows shown below
    st.caption(f"Queue: {running} running, {len(queue) - running} queued")
    writes = db_gateway.writes_allowed()  # a read-only dashboard draws no cancel buttons
    for run in queue.head(QUEUE_SHOWN).itertuples():
        title = run.name or f"{run.arch} d{run.depth} {run.dataset}"
        st.text(f"{title} ({run.id[:8]})")  # st.text: a user's run name stays plain text
        # A custom run's loop has no known length: an empty bar and "3/? epochs".
        share, epochs = run_progress(run.arch, run.status, run.epochs_done, run.epochs_total)
        done = 0.0 if share is None else share
        note = "cancelling" if run.cancel_requested else run.status
        text = f"{epochs} epochs, {note}"
        if not writes:
            st.progress(done, text=text)
            continue
        left, right = st.columns([3, 1], vertical_alignment="center")
        left.progress(done, text=text)
        right.button(
            "",
            key=f"cancel_{run.id}",
            icon=":material/cancel:",
            help="Cancel this run",
            on_click=_cancel,
            args=(run.id,),
            disabled=bool(run.cancel_requested),
        )
    if len(queue) > QUEUE_SHOWN:
        st.caption(f"... and {len(queue) - QUEUE_SHOWN} more")


# -- forms --------------------------------------------------------------------------------------


def _label(field: str) -> str:
    return field.replace("_", " ")


def _field_widget(field: str) -> None:
    """One RunConfig field as a widget, generated from the model so the form never drifts:
    choices -> selectbox, whole numbers -> number input, the rest -> text (pydantic parses it,
    so "1e-3" works for the learning rate and bad input gets pydantic's message)."""
    info = RunConfig.model_fields[field]
    key = f"{FORM_KEY}_{field}"
    help_text = info.description
    is_choice = typing.get_origin(info.annotation) is typing.Literal
    choices = typing.get_args(info.annotation) if is_choice else ()
    if choices:
        st.selectbox(_label(field), choices, index=choices.index(info.default), key=key)
        return
    if info.annotation is int:
        st.number_input(_label(field), value=info.default, step=1, key=key, help=help_text)
        return
    if info.default is None:
        default = ""
    elif info.annotation is float:
        default = f"{info.default:g}"
    else:
        default = str(info.default)
    st.text_input(_label(field), value=default, key=key, help=help_text)


def _dataset_widgets() -> None:
    """Built-in datasets by name, or a CSV file path (stored as csv:PATH)."""
    st.selectbox("dataset", (*BUILTIN_DATASETS, CSV_CHOICE), key=f"{FORM_KEY}_dataset")
    st.text_input(
        "CSV path (when dataset is a csv file)",
        key=f"{FORM_KEY}_csv_path",
        help="A file on the machine the worker runs on, with numeric feature columns and a 0/1 "
        "label column.",
    )


def _form_values() -> dict[str, object]:
    """The New run form's values, from its widgets' session state."""
    state = st.session_state
    values: dict[str, object] = {}
    for field in RunConfig.model_fields:
        if field == "dataset":
            choice = state[f"{FORM_KEY}_dataset"]
            path = str(state.get(f"{FORM_KEY}_csv_path") or "").strip()
            values[field] = f"csv:{path}" if choice == CSV_CHOICE else choice
        else:
            values[field] = state[f"{FORM_KEY}_{field}"]
    if not str(values["name"] or "").strip():
        del values["name"]
    return values


def _errors_by_field(message: str) -> dict[str, list[str]]:
    """ConfigError lines (`field: what is wrong`) grouped by field; others under "config"."""
    found: dict[str, list[str]] = defaultdict(list)
    for line in message.splitlines():
        field, sep, text = line.partition(": ")
        if sep and field in RunConfig.model_fields:
            found[field].append(text)
        else:
            found["config"].append(line)
    return dict(found)


def _queue_new_run() -> None:
    """The form's submit callback. Callbacks run before the script, so the queue drawn in this
    run already lists the new run; the outcome is left in session state for the form to show."""
    try:
        cfg = access.form_csv_config(make_config(_form_values()))
        precheck(cfg, rows=0)  # the header only: cheap, and the worker checks the rest
        run_id = db_gateway.queue_run(cfg.model_dump())
    except ConfigError as exc:
        st.session_state[NOTES_KEY] = {"errors": _errors_by_field(str(exc))}
    except StorageError as exc:
        st.session_state[NOTES_KEY] = {"errors": {"config": [str(exc)]}}
    else:
        st.session_state[NOTES_KEY] = {"done": f"Queued run {run_id[:8]}; the worker picks it up."}


def _error(lines: list[str]) -> None:
    # The messages quote what was typed: escaped, so it shows as typed.
    st.error(escape_markdown("\n\n".join(lines)), icon=":material/error:")


def new_run_form() -> None:
    """Every RunConfig field, RunConfig's defaults; messages appear under the bad fields."""
    notes = st.session_state.pop(NOTES_KEY, {})
    errors = notes.get("errors", {})
    with st.form(FORM_KEY, border=False):
        for field in RunConfig.model_fields:
            if field == "dataset":
                _dataset_widgets()
            else:
                _field_widget(field)
            if field in errors:
                _error(errors[field])
        st.form_submit_button("Queue run", type="primary", width="stretch", on_click=_queue_new_run)
    if "config" in errors:
        _error(errors["config"])
    elif errors:
        st.error("Fix the fields marked above; nothing was queued.")
    if "done" in notes:
        st.success(notes["done"])


def _queue_new_sweep() -> None:
    """The sweep form's submit callback (see `_queue_new_run`)."""
    state = st.session_state
    archs = state[f"{SWEEP_KEY}_arch"] or []
    if not archs:
        state[SWEEP_NOTES_KEY] = {"error": "Pick at least one architecture; nothing was queued."}
        return
    grid = {
        "arch": ",".join(archs),
        "depth": state[f"{SWEEP_KEY}_depth"],
        "seed": state[f"{SWEEP_KEY}_seed"],
        "epochs": str(state[f"{SWEEP_KEY}_epochs"]),
        "dataset": state[f"{SWEEP_KEY}_dataset"],
    }
    try:
        ids = db_gateway.queue_sweep(grid, name=state[f"{SWEEP_KEY}_name"])
    except (ConfigError, StorageError) as exc:
        state[SWEEP_NOTES_KEY] = {"error": str(exc)}
    else:
        state[SWEEP_NOTES_KEY] = {"done": f"Queued {len(ids)} runs as one sweep."}


def sweep_form() -> None:
    """A small grid: architectures x depths x seeds, the other settings at their defaults."""
    notes = st.session_state.pop(SWEEP_NOTES_KEY, {})
    with st.form(SWEEP_KEY, border=False):
        st.text_input("sweep name", value="depth sweep", key=f"{SWEEP_KEY}_name")
        st.pills(
            "architectures",
            ("sigmoid", "relu", "resnet"),
            selection_mode="multi",
            default=["sigmoid", "relu", "resnet"],
            key=f"{SWEEP_KEY}_arch",
        )
        st.text_input("depths (comma list)", value="2,5,10,20", key=f"{SWEEP_KEY}_depth")
        st.text_input("seeds (comma list)", value="0,1,2", key=f"{SWEEP_KEY}_seed")
        st.number_input("epochs", value=20, step=1, key=f"{SWEEP_KEY}_epochs")
        st.selectbox("dataset", BUILTIN_DATASETS, key=f"{SWEEP_KEY}_dataset")
        st.form_submit_button("Queue sweep", width="stretch", on_click=_queue_new_sweep)
    if "error" in notes:
        _error(notes["error"].splitlines())
    if "done" in notes:
        st.success(notes["done"])
