"""Compare: the chosen runs side by side. Runs, epoch, layer and loss scale live in the URL."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st

from gradscope.analysis.diagnosis import Finding, diagnose
from gradscope.dashboard import annotations, charts, db_gateway, seeds, state, view
from gradscope.dashboard.colors import Colors, colors_for
from gradscope.dashboard.seeds import SeedGroups
from gradscope.dashboard.tables import MISSING, config_diff, escape_markdown, number_text
from gradscope.vocab.custom import display_config
from gradscope.vocab.fields import (
    ACTIVE_STATUSES,
    EPOCH_FIELDS,
    HIST_LOG10_MAX,
    HIST_LOG10_MIN,
    LAYER_STAT_FIELDS,
)

REFRESH_S = 2.0
PER_ROW = 3  # per-run charts (heatmaps, decision maps) side by side
FOLD_AFTER = 12  # more per-run charts than this are drawn only on request
MAP_SIZE = 200  # pixels: a decision map with its legends fits a third of a wide page
MAX_OPTIONS = 300  # the run picker lists the newest runs (and the chosen ones)
SEVERITY_COLOR = {"bad": "red", "warn": "orange", "ok": "green"}


def pick_runs() -> list[str]:
    runs = db_gateway.runs()
    known = set(runs["id"])
    chosen = [i for i in state.selected_runs() if i in known]
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
    if picked:
        with st.expander("Names, notes and tags", icon=":material/edit_note:"):
            run_id = st.selectbox("Run", picked, key="compare_annotate_run", format_func=names.get)
            annotations.annotate_form(run_id, runs.set_index("id"), key="compare_annotate")
    return picked


def offer_latest(runs: pd.DataFrame) -> None:
    """No runs in the URL or this session: say so and offer the latest sweep and the latest
    runs created together (not an arbitrary few)."""
    st.info("No runs chosen. Pick some above, tick them on the Runs page, or open:")
    offers: list[tuple[str, list[str]]] = []
    swept = runs[runs["sweep_id"].notna()]
    if not swept.empty:
        sweep_id = swept.iloc[0]["sweep_id"]  # runs are newest first
        members = runs[runs["sweep_id"] == sweep_id]
        name = members.iloc[0]["sweep_name"] or "unnamed sweep"
        offers.append((f"the latest sweep: {name} ({len(members)} runs)", list(members["id"])))
    batch = runs[runs["created_at"] == runs["created_at"].max()]
    ids = list(batch["id"])[::-1]  # creation order
    if not offers or set(ids) != set(offers[0][1]):
        offers.append((f"the latest {len(ids)} run(s) created together", ids))
    for i, (label, ids) in enumerate(offers):
        if st.button(escape_markdown(label), key=f"compare_offer_{i}", icon=":material/history:"):
            state.select_runs(ids)
            # The picker is drawn already: drop its state so the next run reads the URL.
            st.session_state.pop("compare_runs", None)
            st.rerun()


def per_row_for(n: int) -> int:
    """Per-run charts side by side: three for a few runs, six for many (one screen wide)."""
    return PER_ROW if n <= 2 * PER_ROW else 2 * PER_ROW


def shown_per_run(n: int, label: str, key: str) -> bool:
    """Per-run charts for many runs are drawn only on request: 36 heatmaps or maps would make
    the page long and slow (each chart costs its own render), so 36 runs stay quick to scan."""
    return n <= FOLD_AFTER or st.toggle(label, key=key)


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def findings_card(label: str, findings: list[Finding]) -> None:
    """Every finding as a coloured label, the most serious one explained; the rest and the
    usual cures (each cure once) one click away."""
    with st.container(border=True):
        st.markdown(f"**{escape_markdown(label)}**")
        st.markdown(" ".join(f":{SEVERITY_COLOR[f.severity]}-badge[{f.title}]" for f in findings))
        st.markdown(findings[0].detail)
        rest = [f for f in findings if f is not findings[0]]
        cures = list(dict.fromkeys(c for f in findings for c in f.cures))
        if rest or cures:
            with st.expander("Details and usual cures"):
                for f in rest:
                    st.markdown(f"**{f.title}.** {f.detail}")
                if cures:
                    st.markdown("Usually cured by:\n" + "\n".join(f"- {c}" for c in cures))
                for f in findings:
                    if f.evidence:
                        # The numbers the text cites, as recorded (e.g. the moment of divergence).
                        numbers = ", ".join(f"{k} = {_number(v)}" for k, v in f.evidence.items())
                        st.caption(escape_markdown(f"{f.title}: {numbers}"))


def _number(value: object) -> str:
    return number_text(value)


def diagnose_all(
    sel: db_gateway.Selection, epochs: pd.DataFrame, layers: pd.DataFrame
) -> dict[str, list[Finding]]:
    """Each chosen run's findings, most serious first."""
    by_run_e = dict(tuple(epochs.groupby("run_id", sort=False)))
    by_run_l = dict(tuple(layers.groupby("run_id", sort=False)))
    empty_e, empty_l = epochs.iloc[:0], layers.iloc[:0]
    return {
        run.id: diagnose(
            by_run_e.get(run.id, empty_e),
            by_run_l.get(run.id, empty_l),
            arch=run.arch,
            status=run.status,
            depth=int(run.depth),
        )
        for run in sel.runs.itertuples()
    }


def diagnosis_section(
    sel: db_gateway.Selection, epochs: pd.DataFrame, layers: pd.DataFrame
) -> None:
    st.subheader("Diagnosis")
    found = diagnose_all(sel, epochs, layers)
    if len(found) <= PER_ROW:
        for col, run in zip(st.columns(PER_ROW), sel.runs.itertuples(), strict=False):
            with col:
                findings_card(run.run_label, found[run.id])
        return
    # Many runs: one row per run, so 36 runs stay one screen; details below, once per finding.
    st.dataframe(
        diagnosis_table(sel, found),
        hide_index=True,
        width="stretch",
        key="diagnosis_table",
        placeholder=MISSING,  # an unfinished run has no accuracy yet
        height=min(38 + 35 * len(found), 420),
        column_config={
            "finding": st.column_config.MultiselectColumn(
                "finding", options=list(SEVERITY_COLOR), color=list(SEVERITY_COLOR.values())
            ),
            "test acc": st.column_config.NumberColumn("test acc", format="%.3f"),
        },
    )
    distinct: dict[str, Finding] = {}
    for findings in found.values():
        for f in findings:
            distinct.setdefault(f.title, f)
    with st.expander("What the findings mean, and the usual cures"):
        for f in distinct.values():
            cures = "".join(f"\n- {c}" for c in f.cures)
            st.markdown(
                f"**{f.title}** — " + (f"usually cured by:{cures}" if cures else "no cure needed.")
            )


def diagnosis_table(sel: db_gateway.Selection, found: dict[str, list[Finding]]) -> pd.DataFrame:
    """One row per run: its most serious finding as a badge and that finding's title, plus
    the other findings' titles. Text cells (never Markdown): names are shown as typed."""
    rows = []
    for run in sel.runs.itertuples():
        findings = found[run.id]
        top = findings[0]
        rows.append(
            {
                "run": run.run_label,
                "finding": [top.severity],
                "summary": top.title,
                "also": ", ".join(f.title for f in findings[1:]),
                "test acc": run.final_test_acc,
            }
        )
    return pd.DataFrame(rows)


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
        st.dataframe(diff, width="stretch", placeholder=MISSING)
    # Values are typed text (a CSV dataset's path, a label column): shown as typed.
    st.caption(escape_markdown("Shared: " + ", ".join(f"{k} = {v}" for k, v in shared.items())))
    tries = zip(sel.runs["run_label"], sel.runs["attempts"], strict=True)
    st.caption(escape_markdown("Attempts: " + ", ".join(f"{label}: {n}" for label, n in tries)))


def curves_section(view_: CompareView) -> None:
    st.subheader("Learning curves")
    scale = state.choice_param(state.SCALE, state.SCALES, "linear")
    state.bound_widget_value("compare_scale", scale)
    scale = st.segmented_control("Loss axis", state.SCALES, key="compare_scale") or "linear"
    state.set_param(state.SCALE, scale)
    left, right = st.columns(2)
    with left:
        view.chart(charts.loss_curves(view_.epochs, view_.colors, log=scale == "log"))
    with right:
        view.chart(charts.accuracy_curves(view_.epochs, view_.colors))
    view.chart(charts.prediction_spread(view_.epochs, view_.colors))


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


def gradient_flow_section(view_: CompareView, epoch: int) -> None:
    st.subheader("Gradient flow")
    st.caption(
        "Gradient norm of each layer's weights at the chosen epoch. A line that falls "
        "towards layer 0 means the gradient vanishes before it reaches the first layers."
    )
    # The page's one legend sits beside the signature picture (no chart draws its own).
    flow, key = st.columns([3, 1])
    with flow:
        view.chart(charts.gradient_flow(view_.layers, epoch, view_.colors))
    with key:
        view.chart(charts.legend(view_.colors, columns=1))


def gradient_sections(sel: db_gateway.Selection, view_: CompareView, epoch: int) -> None:
    layers = view_.run_layers
    st.subheader("Gradient norm by layer and epoch")
    st.caption(
        "One heatmap per run, all on the same colour scale: dark cells are layers that "
        "barely get a gradient."
    )
    domain = charts.shared_log10_domain(layers)
    by_run = dict(tuple(layers.groupby("run_id", sort=False)))
    shown = [i for i in sel.label_map if i in by_run]
    per_row = per_row_for(len(shown))
    if shown_per_run(len(shown), f"Show the {len(shown)} heatmaps", "compare_heatmaps"):
        for group in chunks(shown, per_row):
            for col, run_id in zip(st.columns(per_row), group, strict=False):
                with col:
                    view.chart(charts.grad_heatmap(by_run[run_id], domain))

    st.subheader("Gradient histograms")
    n_layers = int(layers["layer"].max()) + 1
    layer = layer_control(n_layers)
    hist = db_gateway.histograms(sel, epoch, layer)
    if hist.empty:
        st.info(f"No histograms recorded for layer {layer} at epoch {epoch}.")
        return
    view.chart(
        charts.grad_histograms(
            view_.runs_to_lines(hist, ("bin_left", "bin_right"), ("fraction", "count")),
            view_.colors,
        )
    )
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


def health_section(view_: CompareView, epoch: int) -> None:
    st.subheader("Activation health")
    st.caption(
        "Signal spread: how much each layer's output varies across inputs (it shrinks "
        "layer by layer in a deep sigmoid net). Saturated sigmoid units and dead ReLU "
        "units pass no gradient."
    )
    left, right = st.columns(2)
    with left:
        view.chart(charts.activation_spread(view_.layers, epoch, view_.colors))
    with right:
        view.chart(charts.unit_health(view_.layers, epoch, view_.colors))


def decision_section(sel: db_gateway.Selection, epoch: int) -> None:
    n = len(sel.label_map)
    if n > FOLD_AFTER:  # asked for first: the maps are not even read until then
        st.subheader("Decision boundaries")
        if not shown_per_run(n, f"Show the decision maps of the {n} runs", "compare_maps"):
            return
    maps = db_gateway.decision_maps(sel, epoch)
    if maps.grid.empty:
        if n > FOLD_AFTER:
            st.caption("None of these runs has a decision map (two-feature datasets only).")
        return
    if n <= FOLD_AFTER:
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
    shown = [i for i in sel.label_map if i in grids]
    per_row = per_row_for(len(shown))
    size = MAP_SIZE if per_row == PER_ROW else MAP_SIZE * PER_ROW // per_row + 20
    for group in chunks(shown, per_row):
        for col, run_id in zip(st.columns(per_row), group, strict=False):
            with col:
                pts = points.get(run_id, maps.points.iloc[:0])
                view.chart(charts.decision_map(grids[run_id], pts, size=size), stretch=False)


@dataclass(frozen=True)
class CompareView:
    """What the charts draw: per run, or per seed group (median and band), with a colour key."""

    epochs: pd.DataFrame
    layers: pd.DataFrame
    run_layers: pd.DataFrame  # always per run (heatmaps)
    colors: Colors
    groups: SeedGroups | None
    keys: dict[str, str]  # run id or group id -> colour key

    def runs_to_lines(
        self, frame: pd.DataFrame, keys: tuple[str, ...], fields: tuple[str, ...]
    ) -> pd.DataFrame:
        """A per-run frame as the charts' lines: grouped when seeds are grouped, coloured."""
        if self.groups is not None:
            frame = seeds.aggregate(frame, self.groups, keys, fields)
        return frame.assign(colour=frame["run_id"].map(self.keys))


def colour_controls(sel: db_gateway.Selection) -> tuple[str, bool]:
    """Colour-by and group-seeds controls (their choices are UI state, not the URL)."""
    fields = sorted({k for cfg in sel.runs["config"] for k in cfg if k != "name"})
    left, right = st.columns([3, 2])
    by = left.selectbox(
        "Colour by",
        ["run", "architecture", *[f for f in fields if f != "arch"]],
        key="compare_colour_by",
        help="Each run keeps its own colour on every page; or colour by a setting.",
    )
    grouped = right.toggle(
        "Group seeds",
        key="compare_group_seeds",
        help="Runs that differ only in seed become one line: the median, with a min-max band.",
    )
    return by, grouped


def build_view(
    sel: db_gateway.Selection, epochs: pd.DataFrame, layers: pd.DataFrame, by: str, grouped: bool
) -> CompareView:
    groups = seeds.seed_groups(sel.runs) if grouped else None
    colors, run_keys = colors_for(sel.runs, by, legend=False)
    if groups is None:
        keys = run_keys
    else:
        if by == "run":  # a group takes its first run's colour, under the group's label
            mapping = colors.mapping()
            firsts = {g: members[0] for g, members in groups.members.items()}
            keys = {g: groups.labels[g] for g in firsts}
            colour_of = {groups.labels[g]: mapping[run_keys[r]] for g, r in firsts.items()}
            colors = Colors(
                "colour", "seed group", tuple(colour_of), tuple(colour_of.values()), False
            )
        else:
            keys = {g: run_keys[members[0]] for g, members in groups.members.items()}
        epochs = seeds.aggregate(epochs, groups, ("epoch",), EPOCH_FIELDS)
        layers = seeds.aggregate(layers, groups, ("epoch", "layer"), LAYER_STAT_FIELDS)
    used = set(keys.values())
    colors = Colors(
        colors.field,
        colors.title,
        tuple(k for k in colors.domain if k in used),
        tuple(c for k, c in zip(colors.domain, colors.range, strict=True) if k in used),
        False,
    )
    return CompareView(
        epochs.assign(colour=epochs["run_id"].map(keys)),
        layers.assign(colour=layers["run_id"].map(keys)),
        db_gateway.layer_stats(sel),
        colors,
        groups,
        keys,
    )


def compare(run_ids: list[str]) -> None:
    sel = db_gateway.selection(run_ids)
    epochs, layers = db_gateway.epochs(sel), db_gateway.layer_stats(sel)
    if layers.empty:
        st.info("The chosen runs have not recorded an epoch yet; this page updates as they do.")
        return
    by, grouped = colour_controls(sel)
    view_ = build_view(sel, epochs, layers, by, grouped)
    if view_.groups is not None:
        # Coloured by a setting, the legend names the setting: here each line and its seeds.
        labels = list(view_.groups.labels.values())
        st.caption(
            escape_markdown(
                f"{len(labels)} line(s) from {len(sel.runs)} run(s), each the median of its "
                "seeds with a min-max band: " + "; ".join(labels)
            )
        )
    # The signature picture first: where the gradient goes, then what that means per run.
    epoch = epoch_control(int(layers["epoch"].max()))
    gradient_flow_section(view_, epoch)
    diagnosis_section(sel, epochs, layers)
    curves_section(view_)
    config_section(sel)
    gradient_sections(sel, view_, epoch)
    health_section(view_, epoch)
    decision_section(sel, epoch)


st.title("Compare")
if db_gateway.runs().empty:
    st.info("No runs yet: start some on the Runs page.")
    st.page_link("app_pages/runs.py", label="Go to Runs", icon=":material/table_rows:")
    st.stop()
chosen = pick_runs()
if not chosen:
    offer_latest(db_gateway.runs())
    st.stop()
live = db_gateway.selection(chosen).runs["status"].isin(ACTIVE_STATUSES).any()
st.fragment(view.guarded(compare), run_every=REFRESH_S if live else None)(chosen)
