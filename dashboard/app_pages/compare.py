"""Compare: the chosen runs side by side. Runs, epoch, layer and loss scale live in the URL."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st

from gradscope.analysis.diagnosis import Finding, diagnose, run_facts
from gradscope.dashboard import (
    annotations,
    charts,
    cure_panel,
    db_gateway,
    seeds,
    state,
    view,
)
from gradscope.dashboard.colors import Colors, colors_for, group_colors, varying_field
from gradscope.dashboard.metric_section import metrics_section
from gradscope.dashboard.seeds import SeedGroups
from gradscope.dashboard.tables import (
    MISSING,
    config_diff,
    escape_markdown,
    number_text,
    numbers_only,
    per_run_numbers,
)
from gradscope.vocab.custom import display_config
from gradscope.vocab.fields import (
    ACTIVE_STATUSES,
    EPOCH_FIELDS,
    HIST_LOG10_MAX,
    HIST_LOG10_MIN,
    LAYER_STAT_FIELDS,
)
from gradscope.vocab.warning_kinds import GROWTH

REFRESH_S = 2.0
PER_ROW = 3  # per-run charts (heatmaps, decision maps) side by side
FOLD_AFTER = 12  # more per-run charts than this are drawn only on request
MAP_SIZE = 200  # pixels: a decision map with its legends fits a third of a wide page
MAX_OPTIONS = 300  # the run picker lists the newest runs (and the chosen ones)
CHIPS_SHOWN = 6  # more chosen runs than this: the picker folds away (chips would fill a screen)
MANY_RUNS = 12  # more runs than this are coloured by the setting that varies most, not by run
RETRIES_NAMED = 4  # the configuration's "Retried" line names at most this many runs
SEVERITY_COLOR = {"bad": "red", "warn": "orange", "ok": "green"}


def pick_runs() -> list[str]:
    # The newest runs and the chosen ones, read by themselves: never the list of every run.
    newest = db_gateway.newest_runs(MAX_OPTIONS)
    chosen_runs = db_gateway.runs_of(state.selected_runs())
    chosen = list(chosen_runs["id"])
    extra = chosen_runs[~chosen_runs["id"].isin(newest["id"])]
    runs = pd.concat([newest, extra]) if not extra.empty else newest
    names = db_gateway.labels_of(runs)
    state.bound_widget_value("compare_runs", chosen)
    # A run deleted meanwhile must leave the widget's state before the widget is drawn.
    st.session_state["compare_runs"] = [i for i in st.session_state["compare_runs"] if i in names]
    n = len(st.session_state["compare_runs"])
    # Dozens of chips would push the gradient flow below the first screen: past a few, the
    # picker waits in a folded box that says how many runs are chosen.
    where = st.expander(f"Runs: {n} chosen", icon=":material/checklist:") if n > CHIPS_SHOWN else st
    picked = where.multiselect(
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
            annotations.annotate_form(
                run_id,
                runs.set_index("id"),
                key="compare_annotate",
                known_tags=db_gateway.known_tags(),
            )
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
    ids = list(batch["id"])  # in creation order (db_gateway.runs)
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


def findings_card(label: str, findings: list[Finding], warned: pd.DataFrame | None = None) -> None:
    """Every finding as a coloured label, the most serious one explained; the run's live
    warnings (as they arrive); the rest and the usual cures (each cure once) one click away."""
    with st.container(border=True):
        st.markdown(f"**{escape_markdown(label)}**")
        st.markdown(" ".join(f":{SEVERITY_COLOR[f.severity]}-badge[{f.title}]" for f in findings))
        st.markdown(findings[0].detail)
        if warned is not None and not warned.empty:
            # Stored text (an imported run's too): shown inert, never as Markdown.
            lines = "\n".join(f"- {escape_markdown(line)}" for line in warning_lines(warned))
            st.markdown(f":orange-badge[Live warnings: {len(warned)}]\n{lines}")
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


WARNINGS_SHOWN = 5  # per run on its card; `gradscope show --json` lists them all


def warning_lines(found: pd.DataFrame) -> list[str]:
    """One run's live warnings as plain lines (step, epoch, layer, factor over the layer's
    level), the latest first, at most WARNINGS_SHOWN and a count of the rest."""
    lines = []
    for w in found.iloc[::-1].head(WARNINGS_SHOWN).itertuples():
        if pd.isna(w.factor):
            factor = "non-finite"
        elif w.kind == GROWTH:  # a steady rise over the last steps: overflow on its way
            factor = f"grew {w.factor:.0f}x in a few steps"
        else:
            factor = f"{w.factor:.0f}x its level"
        lines.append(f"step {w.step} (epoch {w.epoch}) · layer {w.layer} · {w.kind} · {factor}")
    if len(found) > WARNINGS_SHOWN:
        lines.append(f"and {len(found) - WARNINGS_SHOWN} earlier")
    return lines


def diagnose_all(
    sel: db_gateway.Selection,
    epochs: pd.DataFrame,
    layers: pd.DataFrame,
    warnings: pd.DataFrame | None = None,
) -> dict[str, list[Finding]]:
    """Each chosen run's findings, most serious first: the same diagnosis as `gradscope show`
    (its dataset's chance level, its model facts, its live warnings, a failed run's error)."""
    by_run_e, by_run_l = per_run_numbers(epochs), per_run_numbers(layers)
    warned = warnings if warnings is not None else db_gateway.warnings(sel)
    by_run_w = dict(tuple(warned.groupby("run_id", sort=False)))
    errors = db_gateway.runs_of(list(sel.label_map)).set_index("id")["error"]
    empty_e, empty_l = (numbers_only(f).iloc[:0] for f in (epochs, layers))
    return {
        run.id: diagnose(
            by_run_e.get(run.id, empty_e),
            by_run_l.get(run.id, empty_l),
            arch=run.arch,
            status=run.status,
            depth=int(run.depth),
            dataset=run.dataset,
            facts=run_facts(run.config),
            warnings=by_run_w.get(run.id, warned.iloc[:0]),
            error=errors.get(run.id) or None,
        )
        for run in sel.runs.itertuples()
    }


def diagnosis_section(
    sel: db_gateway.Selection, epochs: pd.DataFrame, layers: pd.DataFrame
) -> None:
    st.subheader("Diagnosis")
    warned = db_gateway.warnings(sel)
    found = diagnose_all(sel, epochs, layers, warned)
    by_run_w = dict(tuple(warned.groupby("run_id", sort=False)))
    if len(found) <= PER_ROW:
        for col, run in zip(st.columns(PER_ROW), sel.runs.itertuples(), strict=False):
            with col:
                findings_card(run.run_label, found[run.id], by_run_w.get(run.id))
                # Test the cures: the button, the trial's progress, then its verdict.
                cure_panel.cure_section(
                    cure_panel.patient_of(run), found[run.id], key=f"cure_{run.id}"
                )
        return
    # Many runs: one row per run, so 36 runs stay one screen; details below, once per finding.
    st.dataframe(
        diagnosis_table(sel, found, warned),
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


def diagnosis_table(
    sel: db_gateway.Selection,
    found: dict[str, list[Finding]],
    warned: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per run: its most serious finding as a badge and that finding's title, plus
    the other findings' titles and its latest live warning. Text cells (never Markdown):
    names are shown as typed."""
    warned = warned if warned is not None else db_gateway.warnings(sel)
    by_run_w = dict(tuple(warned.groupby("run_id", sort=False)))
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
                # Runs without warnings skip warning_lines (a few ms each on an empty frame).
                "warnings": "; ".join(warning_lines(by_run_w[run.id])[:1])
                if run.id in by_run_w
                else "",
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
    retried = retries_text(sel.runs)
    if retried:  # runs trained once (nearly all) are not listed: one line, or none
        st.caption(escape_markdown(retried))


def retries_text(runs: pd.DataFrame) -> str | None:
    """One line naming the runs that needed more than one attempt (a worker died or lost
    them), at most RETRIES_NAMED of them; None when every run was trained once."""
    attempts = pd.to_numeric(runs["attempts"], errors="coerce").fillna(1)
    again = runs[attempts > 1]
    if again.empty:
        return None
    named = [
        f"{label} ({int(n)} attempts)"
        for label, n in zip(again["run_label"], again["attempts"], strict=True)
    ]
    more = len(named) - RETRIES_NAMED
    text = ", ".join(named[:RETRIES_NAMED]) + (f" and {more} more" if more > 0 else "")
    others = "; the others were trained once" if len(again) < len(runs) else ""
    return f"Retried: {text}{others}."


def curves_section(view_: CompareView, archs: pd.Series | None = None) -> None:
    st.subheader("Learning curves")
    scale = state.choice_param(state.SCALE, state.SCALES, "linear")
    state.bound_widget_value("compare_scale", scale)
    scale = st.segmented_control("Loss axis", state.SCALES, key="compare_scale") or "linear"
    state.set_param(state.SCALE, scale)
    # API runs log what fits their task (a regression logs no accuracy): what they never
    # logged is left out, and a chart no run has a value for is not drawn.
    api = list(archs.index[archs.eq("custom")]) if archs is not None else []
    left, right = st.columns(2)
    with left:
        title = charts.loss_title(archs) if archs is not None else charts.BUILT_IN_LOSS
        if charts.logged_curve(view_.epochs, "loss", api):
            view.chart(
                charts.loss_curves(
                    view_.epochs, view_.colors, log=scale == "log", loss_title=title, unlogged=api
                )
            )
        else:
            st.caption("No run here logged a loss per epoch (`run.log_epoch(train_loss=...)`).")
    with right:
        if charts.logged_curve(view_.epochs, "acc", api):
            view.chart(charts.accuracy_curves(view_.epochs, view_.colors, unlogged=api))
        else:
            st.caption(
                "No run here logged an accuracy (`run.log_epoch(train_acc=..., test_acc=...)`); "
                "what they logged with `run.log` is under Logged metrics."
            )
    spread, what = spread_of(view_.epochs, archs)
    if not spread.empty:  # only runs that measured one: API runs without a probe did not
        view.chart(charts.prediction_spread(spread, view_.colors, what=what))


def spread_of(epochs: pd.DataFrame, archs: pd.Series | None) -> tuple[pd.DataFrame, str]:
    """The epochs of runs whose prediction spread means something, and its name: built-in
    runs' std of predicted probability; an API run's std of its outputs on the probe batch,
    kept only when it gave a probe (else its pred_std is empty, not a diverged run's NaN)."""
    if archs is None or not archs.eq("custom").any() or "run_id" not in epochs:
        return epochs, "std of predicted probability"
    custom = set(archs.index[archs.eq("custom")])
    spread = pd.to_numeric(epochs["pred_std"], errors="coerce")
    probed = set(epochs.loc[spread.notna(), "run_id"])
    keep = ~epochs["run_id"].isin(custom - probed)
    what = (
        "std of outputs on the probe batch"
        if archs.eq("custom").all()
        else "std of predicted probability (API runs: of outputs on the probe batch)"
    )
    return epochs[keep], what


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


def default_colour_by(sel: db_gateway.Selection) -> str:
    """By run for a few runs; past MANY_RUNS, by the setting that varies most
    (gradscope.dashboard.colors.varying_field: architecture for the classic sweeps)."""
    if len(sel.runs) <= MANY_RUNS:
        return "run"
    return varying_field(list(sel.runs["config"])) or "run"


def colour_controls(sel: db_gateway.Selection) -> tuple[str, bool]:
    """Colour-by and group-seeds controls, kept in the URL with the runs (`colour`, `group`)."""
    fields = sorted({k for cfg in sel.runs["config"] for k in cfg if k != "name"})
    options = ["run", "architecture", *[f for f in fields if f != "arch"]]
    by = state.choice_param(state.COLOUR, options, default_colour_by(sel))
    state.bound_widget_value("compare_colour_by", by)
    if st.session_state["compare_colour_by"] not in options:  # a setting the runs lack now
        st.session_state["compare_colour_by"] = default_colour_by(sel)
    grouping = state.choice_param(state.GROUP, state.GROUPINGS, "none")
    state.bound_widget_value("compare_group_seeds", grouping == "seeds")
    left, right = st.columns([3, 2])
    by = left.selectbox(
        "Colour by",
        options,
        key="compare_colour_by",
        help="Each run has its own colour (kept on every page unless two in a view would "
        "share one); or colour by a setting.",
    )
    grouped = right.toggle(
        "Group seeds",
        key="compare_group_seeds",
        help="Runs that differ only in seed become one line: the median, with a min-max band.",
    )
    state.set_param(state.COLOUR, by)
    state.set_param(state.GROUP, "seeds" if grouped else "none")
    return by, grouped


def build_view(
    sel: db_gateway.Selection, epochs: pd.DataFrame, layers: pd.DataFrame, by: str, grouped: bool
) -> CompareView:
    groups = seeds.seed_groups(sel.runs) if grouped else None
    colors, run_keys = colors_for(sel.runs, by, legend=False)
    if groups is None:
        keys = run_keys
    else:
        if by == "run":  # a group takes its first run's colour unless another group has it
            colors, keys = group_colors(sel.runs, groups.members, groups.labels)
        else:
            keys = {g: run_keys[members[0]] for g, members in groups.members.items()}
        epochs = seeds.aggregate(epochs, groups, ("epoch",), EPOCH_FIELDS)
        layers = seeds.aggregate(layers, groups, ("epoch", "layer"), LAYER_STAT_FIELDS)
    colors = colors.only(keys.values())
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
    note = view_.colors.note(varying_field(list(sel.runs["config"])))
    if note:  # past the palette: say so rather than let two lines pass for one
        st.warning(escape_markdown(note), icon=":material/palette:")
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
    curves_section(view_, sel.runs.set_index("id")["arch"])
    metrics_section(sel, view_.colors)
    config_section(sel)
    gradient_sections(sel, view_, epoch)
    health_section(view_, epoch)
    decision_section(sel, epoch)


st.title("Compare")
if not db_gateway.has_runs():
    st.info("No runs yet: start some on the Runs page.")
    st.page_link("app_pages/runs.py", label="Go to Runs", icon=":material/table_rows:")
    st.stop()
chosen = pick_runs()
if not chosen:
    offer_latest(db_gateway.runs())
    st.stop()
live = db_gateway.selection(chosen).runs["status"].isin(ACTIVE_STATUSES).any()
st.fragment(view.guarded(compare), run_every=REFRESH_S if live else None)(chosen)
