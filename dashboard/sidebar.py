"""The sidebar: the database in use, the worker, the live queue, and forms that queue runs."""

from __future__ import annotations

import typing
from collections import defaultdict

import streamlit as st

from dashboard import data
from dashboard.tables import escape_markdown
from runner.config import BUILTIN_DATASETS, ConfigError, RunConfig, make_config

QUEUE_REFRESH_S = 2.0
QUEUE_SHOWN = 8
CSV_CHOICE = "csv file"
FORM_KEY = "new_run"  # widget keys are f"{FORM_KEY}_{field}"
SWEEP_KEY = "new_sweep"


def render() -> None:
    with st.sidebar:
        st.caption("Database")
        st.code(data.database_for_people(), language=None, wrap_lines=True)
        _live_queue()
        with st.expander("New run", icon=":material/add:"):
            new_run_form()
        with st.expander("New sweep", icon=":material/grid_view:"):
            sweep_form()


# -- worker and queue ---------------------------------------------------------------------------


def _cancel(run_id: str) -> None:
    outcome = data.cancel_runs([run_id]).get(run_id, "not found")
    st.toast(f"Run {run_id[:8]}: {outcome}")


@st.fragment(run_every=QUEUE_REFRESH_S)
def _live_queue() -> None:
    """Refreshes itself every few seconds without rerunning the page."""
    status = data.worker_status()
    if status.local_pid is not None:
        st.success(f"Worker alive (pid {status.local_pid})", icon=":material/memory:")
    elif status.live_workers:
        st.success(f"{len(status.live_workers)} worker(s) training", icon=":material/memory:")
    else:
        st.warning(
            "Worker not running: queued runs wait. Start one with `gradscope worker`.",
            icon=":material/pause_circle:",
        )
    queue = data.queue()
    st.caption(f"Queue: {status.running} running, {status.queued} queued")
    for run in queue.head(QUEUE_SHOWN).itertuples():
        title = run.name or f"{run.arch} d{run.depth} {run.dataset}"
        st.text(f"{title} ({run.id[:8]})")  # st.text: a user's run name stays plain text
        done = run.epochs_done / max(run.epochs_total, 1)
        note = "cancelling" if run.cancel_requested else run.status
        left, right = st.columns([3, 1], vertical_alignment="center")
        left.progress(done, text=f"{run.epochs_done}/{run.epochs_total} epochs, {note}")
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


def _field_widget(field: str) -> object:
    """One RunConfig field as a widget, generated from the model so the form never drifts:
    choices -> selectbox, whole numbers -> number input, the rest -> text (pydantic parses it,
    so "1e-3" works for the learning rate and bad input gets pydantic's message)."""
    info = RunConfig.model_fields[field]
    key = f"{FORM_KEY}_{field}"
    help_text = info.description
    choices = typing.get_args(info.annotation) if typing.get_origin(info.annotation) is (
        typing.Literal
    ) else ()
    if choices:
        return st.selectbox(_label(field), choices, index=choices.index(info.default), key=key)
    if info.annotation is int:
        return st.number_input(_label(field), value=info.default, step=1, key=key, help=help_text)
    default = "" if info.default is None else f"{info.default:g}" if info.annotation is float else (
        str(info.default)
    )
    return st.text_input(_label(field), value=default, key=key, help=help_text)


def _dataset_widgets() -> str:
    """Built-in datasets by name, or a CSV file path (stored as csv:PATH)."""
    key = f"{FORM_KEY}_dataset"
    choice = st.selectbox("dataset", (*BUILTIN_DATASETS, CSV_CHOICE), key=key)
    path = st.text_input(
        "CSV path (when dataset is a csv file)", key=f"{FORM_KEY}_csv_path", help="A file on "
        "the machine the worker runs on, with numeric feature columns and a 0/1 label column."
    )
    return f"csv:{path.strip()}" if choice == CSV_CHOICE else choice


def _errors_by_field(message: str) -> dict[str, list[str]]:
    """ConfigError lines (`field: what is wrong`) grouped by field; others under "config"."""
    found: dict[str, list[str]] = defaultdict(list)
    for line in message.splitlines():
        field, sep, text = line.partition(": ")
        if sep and field in RunConfig.model_fields:
            found[field].append(text)
        else:
            found["config"].append(line)
    return found


def new_run_form() -> None:
    """Every RunConfig field, RunConfig's defaults; messages appear under the bad fields."""
    with st.form(FORM_KEY, border=False):
        values: dict[str, object] = {}
        slots = {}
        for field in RunConfig.model_fields:
            values[field] = _dataset_widgets() if field == "dataset" else _field_widget(field)
            slots[field] = st.empty()
        submitted = st.form_submit_button("Queue run", type="primary", width="stretch")
        result = st.empty()
    if not submitted:
        return
    values = {k: v for k, v in values.items() if not (k == "name" and not str(v).strip())}
    try:
        cfg = make_config(values)
    except ConfigError as exc:
        errors = _errors_by_field(str(exc))
        for field, lines in errors.items():
            target = slots.get(field, result)
            # The messages quote what was typed: escaped so it shows as typed.
            target.error(escape_markdown("\n\n".join(lines)), icon=":material/error:")
        if "config" not in errors:
            result.error("Fix the fields marked above; nothing was queued.")
        return
    run_id = data.queue_run(cfg)
    result.success(f"Queued run {run_id[:8]}. The worker picks it up next.")


def _comma_list(values: list[str]) -> str:
    return ",".join(values)


def sweep_form() -> None:
    """A small grid: architectures x depths x seeds, the other settings at their defaults."""
    with st.form(SWEEP_KEY, border=False):
        name = st.text_input("sweep name", value="depth sweep", key=f"{SWEEP_KEY}_name")
        archs = st.pills(
            "architectures",
            ("sigmoid", "relu", "resnet"),
            selection_mode="multi",
            default=["sigmoid", "relu", "resnet"],
            key=f"{SWEEP_KEY}_arch",
        )
        depths = st.text_input("depths (comma list)", value="2,5,10,20", key=f"{SWEEP_KEY}_depth")
        seeds = st.text_input("seeds (comma list)", value="0,1,2", key=f"{SWEEP_KEY}_seed")
        epochs = st.number_input("epochs", value=20, step=1, key=f"{SWEEP_KEY}_epochs")
        dataset = st.selectbox("dataset", BUILTIN_DATASETS, key=f"{SWEEP_KEY}_dataset")
        submitted = st.form_submit_button("Queue sweep", width="stretch")
        result = st.empty()
    if not submitted:
        return
    if not archs:
        result.error("Pick at least one architecture; nothing was queued.")
        return
    grid = {
        "arch": _comma_list(archs),
        "depth": depths,
        "seed": seeds,
        "epochs": str(epochs),
        "dataset": dataset,
    }
    try:
        ids = data.queue_sweep(grid, name=name)
    except ConfigError as exc:
        result.error(escape_markdown(str(exc)).replace("\n", "\n\n"), icon=":material/error:")
        return
    result.success(f"Queued {len(ids)} runs as one sweep.")
