"""Runs: every run in a sortable, filterable table; pick runs to compare, cancel or delete them."""

from __future__ import annotations

import pandas as pd
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from gradscope.dashboard import annotations, cure_panel, db_gateway, state, tables, view
from gradscope.db.errors import StorageError
from gradscope.vocab.fields import ACTIVE_STATUSES

# Pixels for the diagnosis label: its longest text ("vanished early") at about 8 px a character
# plus the label's own padding. Streamlit's default width cut it to "vanished".
DIAGNOSIS_WIDTH = 8 * max(len(b) for b in tables.BADGES) + 40

COLUMNS = {
    "status": st.column_config.TextColumn("status", width=90),
    "progress": st.column_config.ProgressColumn(
        "progress",
        min_value=0.0,
        max_value=1.0,
        format="percent",
        width="small",
        color="blue",  # the theme's red would read as an error on completed runs
    ),
    "test acc": st.column_config.NumberColumn(
        "test acc", format="%.3f", width="small", help="Test accuracy at the last epoch"
    ),
    "diagnosis": st.column_config.MultiselectColumn(
        "diagnosis",
        width=DIAGNOSIS_WIDTH,
        help="The most serious finding; open Compare for the full diagnosis",
        options=tables.BADGES,
        color=tables.BADGE_COLORS,
    ),
    "warnings": st.column_config.TextColumn(
        "warnings",
        width="medium",
        help="Live warnings while the run trains (a layer's gradient norm far above or growing "
        "fast over its own level): how many, and the latest one's step, layer and factor",
    ),
    "tags": st.column_config.ListColumn("tags", width="small"),
    "created": st.column_config.DatetimeColumn("created", format="distance"),
    "error": st.column_config.TextColumn("error", width="large"),
}


def empty_state() -> None:
    st.info(
        "**No runs yet.** Start with the picture gradscope exists to show: the same 10-layer "
        "network on the two-moons data with sigmoid, ReLU and residual layers. The sigmoid net's "
        "gradients vanish and it stays at 50% accuracy; the other two learn. All three train in "
        "a few seconds.",
        icon=":material/science:",
    )
    if not db_gateway.writes_allowed():
        st.caption(
            "This dashboard is read-only: queue runs with `gradscope submit` / `gradscope sweep` "
            "in a terminal on the machine that holds the database."
        )
        return
    if st.button("Run the classic comparison", type="primary", icon=":material/play_arrow:"):
        try:
            ids = db_gateway.queue_classic_comparison()
        except StorageError as exc:
            view.refusal(exc)
            return
        state.select_runs(ids)
        st.rerun()
    st.caption(
        "Or queue your own run or sweep from the sidebar, or `gradscope submit` / "
        "`gradscope sweep` in a terminal."
    )


def filters(table: pd.DataFrame, data_version: tuple[str, ...]) -> pd.DataFrame:
    """Filter widgets (UI choices, kept in session state) and the rows that pass them.

    `table` is the listing without badges (db_gateway.runs_listing); a diagnosis filter reads
    every run's badges (db_gateway.runs_table) only when one is chosen."""

    def pills(where: DeltaGenerator, label: str, options: list[str], key: str) -> list[str]:
        # Pill labels are Markdown; dataset values are typed paths (csv:PATH): show them as is.
        return where.pills(
            label, options, selection_mode="multi", key=key, format_func=tables.escape_markdown
        )

    top = st.columns([2, 2, 3])
    text = top[0].text_input("Search", placeholder="name or id", key="runs_search")
    archs = pills(top[1], "Architecture", sorted(table["arch"].unique()), "runs_arch")
    statuses = pills(top[2], "Status", sorted(table["status"].unique()), "runs_status")
    more = st.columns([3, 2, 2, 2])
    diagnoses = pills(more[0], "Diagnosis", list(tables.BADGES), "runs_diag")
    if diagnoses:
        table = db_gateway.runs_table(data_version)
    datasets = pills(more[1], "Dataset", sorted(table["dataset"].unique()), "runs_dataset")
    sweeps = sorted(s for s in table["sweep"].unique() if s)
    sweep = None
    if sweeps:
        sweep = more[2].selectbox(
            "Sweep", ["", *sweeps], key="runs_sweep", format_func=lambda s: s or "any"
        )
    lo, hi = int(table["depth"].min()), int(table["depth"].max())
    depth = more[3].slider("Depth", lo, hi, (lo, hi), key="runs_depth") if hi > lo else None
    known_tags = sorted({t for have in table["tags"] for t in have})
    tags = None
    if known_tags:
        tags = st.multiselect(
            "Tags", known_tags, key="runs_tags", placeholder="runs carrying every tag chosen"
        )
    return tables.filter_runs(
        table,
        text=text,
        archs=archs,
        datasets=datasets,
        statuses=statuses,
        diagnoses=diagnoses,
        sweep=sweep,
        depth=depth,
        tags=tags,
    )


def actions(chosen: list[str], table: pd.DataFrame, hidden: int = 0, elsewhere: int = 0) -> None:
    n = len(chosen)
    if n:
        # Name what the buttons act on: ticked rows may have scrolled out of view.
        outside = f", {hidden} of them outside the current filters" if hidden else ""
        outside += f", {elsewhere} on other pages" if elsewhere else ""
        st.caption(
            f"**Selected ({n}{outside}):** "
            + tables.escape_markdown(tables.selection_text(table, chosen))
        )
    cols = st.columns(4)
    if cols[0].button(
        f"Compare {n} run(s)", type="primary", disabled=not n, icon=":material/compare_arrows:"
    ):
        state.select_runs(chosen)
        st.switch_page("app_pages/compare.py", query_params=state.runs_param(chosen))
    if not db_gateway.writes_allowed():  # a read-only dashboard: no cancel, no delete
        return
    try:
        write_actions(chosen, table, cols)
    except StorageError as exc:
        view.refusal(exc)


def write_actions(chosen: list[str], table: pd.DataFrame, cols: list[DeltaGenerator]) -> None:
    """Cancel and delete (with its confirmation); refusals reach the caller."""
    n = len(chosen)
    active = [i for i in chosen if table.at[i, "status"] in ACTIVE_STATUSES]
    if cols[1].button(
        f"Cancel {len(active)} run(s)",
        disabled=not active,
        icon=":material/cancel:",
        help="Queued runs stop at once, running ones within an epoch; recorded epochs are kept.",
    ):
        outcome = db_gateway.cancel_runs(active)
        # Runs that finished since the page was drawn report their status instead: not counted.
        cancelled = sum(v in ("cancelled", "cancel requested") for v in outcome.values())
        missed = len(active) - cancelled
        note = f"; {missed} had already finished or were deleted" if missed else ""
        st.toast(f"Cancelled {cancelled} run(s){note}")
    if cols[2].button(f"Delete {n} run(s)", disabled=not n, icon=":material/delete:"):
        st.session_state["confirm_delete"] = chosen
    pending = [i for i in st.session_state.get("confirm_delete", []) if i in table.index]
    if pending:
        confirm_delete(pending, table)


def confirm_delete(pending: list[str], table: pd.DataFrame) -> None:
    running = [i for i in pending if table.at[i, "status"] == "running"]
    deletable = [i for i in pending if i not in running]
    if running:
        st.warning(f"{len(running)} running run(s) will be kept: cancel them first.")
    st.warning(
        f"Delete {len(deletable)} run(s) and everything recorded for them? This cannot be undone.",
        icon=":material/warning:",
    )
    # Every run that would go, by name, id and status (a table: names are never Markdown).
    st.dataframe(
        table.loc[deletable, ["name", "status", "arch", "depth", "id"]],
        hide_index=True,
        key="delete_list",
        placeholder=tables.MISSING,
        height=min(38 + 35 * len(deletable), 300),
    )
    yes, no = st.columns([1, 5])
    if yes.button("Delete", type="primary", disabled=not deletable, key="delete_yes"):
        deleted = db_gateway.delete_runs(deletable)
        st.session_state.pop("confirm_delete", None)
        state.select_runs([i for i in state.selected_runs() if i not in deletable])
        st.toast(f"Deleted {deleted} run(s)")
        st.rerun()
    if no.button("Keep them", key="delete_no"):
        st.session_state.pop("confirm_delete", None)
        st.rerun(scope="fragment")


# The widgets whose change starts the table again at page 1.
VIEW_KEYS = (
    "runs_search",
    "runs_arch",
    "runs_status",
    "runs_diag",
    "runs_dataset",
    "runs_sweep",
    "runs_depth",
    "runs_tags",
    "runs_sort",
    "runs_desc",
)


def ordered(view: pd.DataFrame) -> pd.DataFrame:
    """The sort widgets and `view` in that order: the order holds across pages (a column
    header click sorts only the page shown)."""
    left, right = st.columns([2, 5], vertical_alignment="bottom")
    by = left.selectbox("Sort by", tables.SORTS, key="runs_sort")
    descending = right.toggle("Descending", key="runs_desc")
    return tables.sort_runs(view, by, descending)


def _turn_page(to: int) -> None:
    state.set_param(state.PAGE, max(1, to))


def current_page(n_pages: int) -> int:
    """The page in the URL (`?page=`), clamped; page 1 again whenever a filter or the sort
    changed (the first render keeps the URL's page, so a shared link opens where it points)."""
    signature = tuple(str(st.session_state.get(k)) for k in VIEW_KEYS)
    before = st.session_state.get("runs_view_signature")
    st.session_state["runs_view_signature"] = signature
    page = state.int_param(state.PAGE, 1, 1, n_pages)
    if before is not None and before != signature:
        page = 1
    if page != 1 or state.PAGE in st.query_params:
        state.set_param(state.PAGE, page)
    return page


def page_controls(page: int, n_pages: int, n_rows: int) -> None:
    if n_pages == 1:
        return
    first = (page - 1) * tables.PAGE_ROWS + 1
    last = min(page * tables.PAGE_ROWS, n_rows)
    prev, where, nxt = st.columns([1, 3, 1], vertical_alignment="center")
    prev.button(
        "Previous",
        key="runs_prev",
        icon=":material/chevron_left:",
        disabled=page <= 1,
        on_click=_turn_page,
        args=(page - 1,),
    )
    where.caption(f"Page {page} of {n_pages:,}: rows {first:,}–{last:,} of {n_rows:,}")
    nxt.button(
        "Next",
        key="runs_next",
        icon=":material/chevron_right:",
        disabled=page >= n_pages,
        on_click=_turn_page,
        args=(page + 1,),
    )


def runs_view() -> None:
    data_version = db_gateway.version()
    table = db_gateway.runs_listing(data_version)
    st.session_state[db_gateway.TABLE_VERSION_KEY] = data_version  # see sidebar._live_queue
    view = filters(table, data_version)
    if view.empty:
        st.info("No runs match these filters.")
        return
    view = ordered(view)
    # One page at a time: the browser holds PAGE_ROWS rows, and only their badges are read.
    n_pages = tables.page_count(len(view))
    page = current_page(n_pages)
    rows = db_gateway.runs_page(list(tables.page_of(view, page).index), data_version)
    # The error and warnings columns only where some run has one.
    shown = [c for c in rows.columns if c not in ("error", "warnings") or rows[c].any()]
    selected = set(state.selected_runs())
    default = [pos for pos, run_id in enumerate(rows.index) if run_id in selected]
    event = st.dataframe(
        rows[shown],
        # A new key whenever the rows change: the selection is kept by run id (state), so it
        # follows its runs when rows are added, deleted or filtered, instead of positions.
        key=f"runs_table_{hash(tuple(rows.index))}",
        on_select="rerun",
        selection_mode="multi-row",
        selection_default={"selection": {"rows": default}},
        hide_index=True,
        column_config=COLUMNS,
        placeholder=tables.MISSING,  # an unfinished run's accuracy: a dash, not "None"
        height=min(38 + 35 * len(rows), 560),
    )
    page_controls(page, n_pages, len(view))
    # Runs ticked earlier and now hidden by the filters (or on another page) stay selected, and
    # the actions say so (they are named under the table), rather than vanishing unseen.
    hidden = [i for i in state.selected_runs() if i in table.index and i not in view.index]
    elsewhere = [i for i in state.selected_runs() if i in view.index and i not in rows.index]
    chosen = [rows.index[pos] for pos in event.selection.rows] + elsewhere + hidden
    if set(chosen) != selected:
        state.select_runs(chosen)
    st.caption(
        f"{len(view):,} of {len(table):,} runs. Tick rows to compare, cancel or delete them; "
        "Sort by orders every page, a column header sorts the page shown."
    )
    actions(chosen, table, hidden=len(hidden), elsewhere=len(elsewhere))
    if len(chosen) == 1:
        cure_action(chosen[0])
        annotate_form(chosen[0], db_gateway.runs(data_version).set_index("id"))
    cure_panel.classic_followup(db_gateway.runs(data_version))


def cure_action(run_id: str) -> None:
    """The selected run's cure trial: its verdict, or the button that starts one."""
    found = cure_panel.diagnose_one(run_id)
    if found is not None:
        patient, findings = found
        cure_panel.cure_section(patient, findings, key="runs_cure")


def annotate_form(run_id: str, runs: pd.DataFrame) -> None:
    with st.expander("Name, notes and tags of the selected run", icon=":material/edit_note:"):
        annotations.annotate_form(run_id, runs, key="annotate")


st.title("Runs")
if db_gateway.runs().empty:
    # A run queued elsewhere (CLI, another tab) then brings the table (see sidebar._live_queue).
    st.session_state[db_gateway.TABLE_VERSION_KEY] = db_gateway.version()
    empty_state()
else:
    # No timer of its own: the sidebar's live queue reruns the app when the data moves on, so
    # the table and the queue refresh together instead of on two clocks that drift apart.
    st.fragment(view.guarded(runs_view))()
