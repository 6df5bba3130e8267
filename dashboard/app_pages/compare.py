"""Compare: the chosen runs side by side. Runs, epoch, layer and loss scale live in the URL."""

from __future__ import annotations

import altair as alt
import pandas as pd
import streamlit as st

from dashboard import charts, db_gateway, state, view
from dashboard.diagnosis import Finding, diagnose
from dashboard.tables import config_diff, escape_markdown
from vocab.custom import display_config
from vocab.fields import ACTIVE_STATUSES, HIST_LOG10_MAX, HIST_LOG10_MIN

REFRESH_S = 2.0
PER_ROW = 3  # per-run charts (heatmaps, decision maps) side by side
MAP_SIZE = 200  # pixels: a decision map with its legends fits a third of a wide page
MAX_OPTIONS = 300  # the run picker lists the newest runs (and the chosen ones)
SEVERITY_COLOR = {"bad": "red", "warn": "orange", "ok": "green"}


def pick_runs() -> list[str]:
    runs = db_gateway.runs()
    known = set(runs["id"])
    chosen = [i for i in state.selected_runs() if i in known]
    if not chosen:  # nothing chosen yet: the newest runs that have recorded something
        chosen = list(runs.loc[runs["epochs_done"] > 0, "id"].head(3))
        if chosen:
            st.caption("Showing the newest runs. Pick others here or on the Runs page.")
    names = db_gateway.labels(runs["id"].head(MAX_OPTIONS).tolist() + chosen)
    state.bound_widget_value("compare_runs", chosen)
    # A run deleted meanwhile must leave the widget's state before the widget is drawn.
    st.session_state["compare_runs"] = [i for i in st.session_state["compare_runs"] if i in names]
    picked = st.multiselect(
        "Runs",
        list(names),
        key="compare_runs",
        format_func=names.get,
        placeholder="Choose runs to compare",
    )
    state.select_runs(picked)
    return picked


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def findings_card(label: str, findings: list[Finding]) -> None:
    """Every finding as a coloured label, the most serious one explained; the rest and the
    usual cures one click away."""
    with st.container(border=True):
        st.markdown(f"**{escape_markdown(label)}**")
        st.markdown(" ".join(f":{SEVERITY_COLOR[f.severity]}-badge[{f.title}]" for f in findings))
        st.markdown(findings[0].detail)
        with st.expander("Details and usual cures"):
            for f in findings:
                if f is not findings[0]:
                    st.markdown(f"**{f.title}.** {f.detail}")
                if f.cures:
                    st.markdown(
                        f"*{f.title}* usually cured by:\n" + "\n".join(f"- {c}" for c in f.cures)
                    )


def diagnosis_section(
    sel: db_gateway.Selection, epochs: pd.DataFrame, layers: pd.DataFrame
) -> None:
    st.subheader("Diagnosis")
    by_run_e = dict(tuple(epochs.groupby("run_id", sort=False)))
    by_run_l = dict(tuple(layers.groupby("run_id", sort=False)))
    empty_e, empty_l = epochs.iloc[:0], layers.iloc[:0]
    for group in chunks(list(sel.runs.itertuples()), PER_ROW):
        for col, run in zip(st.columns(PER_ROW), group, strict=False):
            found = diagnose(
                by_run_e.get(run.id, empty_e),
                by_run_l.get(run.id, empty_l),
                arch=run.arch,
                status=run.status,
                depth=int(run.depth),
            )
            with col:
                findings_card(run.run_label, found)


def config_section(sel: db_gateway.Selection) -> None:
    st.subheader("Configuration")
    # The name is in every label already.
    # A custom run's config (the user's dict and a model summary) is shown flat beside RunConfigs.
    configs = [
        {k: v for k, v in display_config(cfg).items() if k != "name"} for cfg in sel.runs["config"]
    ]
    diff, shared = config_diff(dict(zip(sel.runs["run_label"], configs, strict=True)))
    if diff.empty:
        st.caption("All chosen runs have the same configuration.")
    else:
        st.dataframe(diff, width="stretch")
    # Values are typed text (a CSV dataset's path, a label column): shown as typed.
    st.caption(escape_markdown("Shared: " + ", ".join(f"{k} = {v}" for k, v in shared.items())))


def curves_section(epochs: pd.DataFrame) -> None:
    st.subheader("Learning curves")
    scale = state.choice_param(state.SCALE, state.SCALES, "linear")
    state.bound_widget_value("compare_scale", scale)
    scale = st.segmented_control("Loss axis", state.SCALES, key="compare_scale") or "linear"
    state.set_param(state.SCALE, scale)
    loss = charts.loss_curves(epochs)
    if scale == "log":
        loss = loss.encode(
            y=alt.Y(
                "value:Q",
                title="binary cross-entropy (nats, log scale)",
                scale=alt.Scale(type="log"),
            )
        )
    left, right = st.columns(2)
    with left:
        view.chart(loss)
    with right:
        view.chart(charts.accuracy_curves(epochs))
    view.chart(charts.prediction_spread(epochs))


def epoch_control(max_epoch: int) -> int:
    """The chosen epoch; the last one unless the URL says otherwise (trained boundaries)."""
    epoch = state.int_param(state.EPOCH, max_epoch, 1, max_epoch)
    if max_epoch == 1:
        return 1
    state.bound_widget_value("compare_epoch", epoch)
    st.session_state["compare_epoch"] = min(max(st.session_state["compare_epoch"], 1), max_epoch)
    epoch = st.slider(
        "Epoch",
        1,
        max_epoch,
        key="compare_epoch",
        help="The epoch shown by gradient flow, histograms, activation health and decision maps.",
    )
    state.set_param(state.EPOCH, epoch)
    return epoch


def layer_control(n_layers: int) -> int:
    layer = state.int_param(state.LAYER, 0, 0, n_layers - 1)
    state.bound_widget_value("compare_layer", layer)
    st.session_state["compare_layer"] = min(max(st.session_state["compare_layer"], 0), n_layers - 1)
    names = {i: f"{i} (input side)" if i == 0 else str(i) for i in range(n_layers)}
    layer = st.selectbox("Layer", list(names), key="compare_layer", format_func=names.get)
    state.set_param(state.LAYER, layer)
    return layer


def gradient_sections(sel: db_gateway.Selection, layers: pd.DataFrame, epoch: int) -> None:
    st.subheader("Gradient flow")
    st.caption(
        "Gradient norm of each layer's weights at the chosen epoch. A line that falls "
        "towards layer 0 means the gradient vanishes before it reaches the first layers."
    )
    view.chart(charts.gradient_flow(layers, epoch))

    st.subheader("Gradient norm by layer and epoch")
    st.caption(
        "One heatmap per run, all on the same colour scale: dark cells are layers that "
        "barely get a gradient."
    )
    domain = charts.shared_log10_domain(layers)
    by_run = dict(tuple(layers.groupby("run_id", sort=False)))
    for group in chunks([i for i in sel.label_map if i in by_run], PER_ROW):
        for col, run_id in zip(st.columns(PER_ROW), group, strict=False):
            with col:
                view.chart(charts.grad_heatmap(by_run[run_id], domain))

    st.subheader("Gradient histograms")
    n_layers = int(layers["layer"].max()) + 1
    layer = layer_control(n_layers)
    hist = db_gateway.histograms(sel, epoch, layer)
    if hist.empty:
        st.info(f"No histograms recorded for layer {layer} at epoch {epoch}.")
        return
    view.chart(charts.grad_histograms(hist))
    st.caption(
        f"Bins are a quarter decade wide; the leftmost also counts entries below "
        f"1e{HIST_LOG10_MIN:.0f} and the rightmost those above 1e{HIST_LOG10_MAX:.0f}."
    )
    zeros = hist.groupby("run_label", sort=False)[["zero_fraction", "nonfinite_fraction"]].first()
    notes = [
        f"{escape_markdown(label)}: {z:.0%} exactly zero" + (f", {n:.0%} non-finite" if n else "")
        for label, (z, n) in zeros.iterrows()
        if z or n
    ]
    if notes:
        st.caption("Not on the log axis: " + "; ".join(notes))


def health_section(layers: pd.DataFrame, epoch: int) -> None:
    st.subheader("Activation health")
    st.caption(
        "Signal spread: how much each layer's output varies across inputs (it shrinks "
        "layer by layer in a deep sigmoid net). Saturated sigmoid units and dead ReLU "
        "units pass no gradient."
    )
    left, right = st.columns(2)
    with left:
        view.chart(charts.activation_spread(layers, epoch))
    with right:
        view.chart(charts.unit_health(layers, epoch))


def decision_section(sel: db_gateway.Selection, epoch: int) -> None:
    maps = db_gateway.decision_maps(sel, epoch)
    if maps.grid.empty:
        return
    st.subheader("Decision boundaries")
    shown = maps.grid.groupby("run_id", sort=False)["epoch"].first()
    st.caption(
        f"P(class 1) over the input plane with the test points, at the last recorded map "
        f"at or before epoch {epoch} (maps are kept at a few epochs: here "
        f"{', '.join(str(e) for e in sorted(set(shown)))}). A flat colour means the net "
        "gives the same answer everywhere."
    )
    grids = dict(tuple(maps.grid.groupby("run_id", sort=False)))
    points = dict(tuple(maps.points.groupby("run_id", sort=False)))
    for group in chunks([i for i in sel.label_map if i in grids], PER_ROW):
        for col, run_id in zip(st.columns(PER_ROW), group, strict=False):
            with col:
                pts = points.get(run_id, maps.points.iloc[:0])
                view.chart(charts.decision_map(grids[run_id], pts, size=MAP_SIZE), stretch=False)


def compare(run_ids: list[str]) -> None:
    sel = db_gateway.selection(run_ids)
    epochs, layers = db_gateway.epochs(sel), db_gateway.layer_stats(sel)
    if layers.empty:
        st.info("The chosen runs have not recorded an epoch yet; this page updates as they do.")
        return
    diagnosis_section(sel, epochs, layers)
    config_section(sel)
    curves_section(epochs)
    epoch = epoch_control(int(layers["epoch"].max()))
    gradient_sections(sel, layers, epoch)
    health_section(layers, epoch)
    decision_section(sel, epoch)


st.title("Compare")
if db_gateway.runs().empty:
    st.info("No runs yet: start some on the Runs page.")
    st.page_link("app_pages/runs.py", label="Go to Runs", icon=":material/table_rows:")
    st.stop()
chosen = pick_runs()
if not chosen:
    st.info("Choose runs above, or tick them on the Runs page.")
    st.stop()
live = db_gateway.selection(chosen).runs["status"].isin(ACTIVE_STATUSES).any()
st.fragment(view.guarded(compare), run_every=REFRESH_S if live else None)(chosen)
