"""Rendering helpers shared by the pages: charts sized to their column, and database failures
shown as a message that says what to do (never a traceback)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec

import altair as alt
import streamlit as st

from gradscope.dashboard import db_gateway
from gradscope.dashboard.tables import escape_markdown
from gradscope.db.errors import SchemaVersionError, StorageError

P = ParamSpec("P")

# Width fits the column, height stays the chart's plot height. Streamlit's default ("fit" in
# both directions) takes titles and bottom legends out of the fixed height, which squashed the
# plots to a line and clipped their titles.
FIT_WIDTH = alt.AutoSizeParams(type="fit-x", contains="padding")
# Fixed-size charts (decision maps) keep their plot size; legends and axes are added around it.
OWN_SIZE = alt.AutoSizeParams(type="pad")


# Streamlit's chart theme colours titles and axes but not subtitles, which Vega draws black:
# unreadable on the dark theme. They take the theme's text colour (Streamlit's defaults).
TEXT_COLORS = {"light": "#31333f", "dark": "#fafafa"}


def text_color() -> str:
    """The page theme's text colour (light when the browser has not said)."""
    try:
        kind = st.context.theme.type
    except (AttributeError, RuntimeError):  # outside a script run (tests of pure helpers)
        kind = None
    return TEXT_COLORS.get(kind or "light", TEXT_COLORS["light"])


def chart(figure: alt.TopLevelMixin, *, stretch: bool = True) -> None:
    """Show an Altair chart stretched to its column (or at its own size), its subtitles in the
    theme's text colour."""
    subtitle = text_color()
    if stretch:
        st.altair_chart(
            figure.properties(autosize=FIT_WIDTH).configure_title(subtitleColor=subtitle),
            width="stretch",
        )
    else:
        # A title no wider than the plot, so charts side by side do not run into each other.
        limit = figure.width + 60 if isinstance(figure.width, int) else 0
        st.altair_chart(
            figure.properties(autosize=OWN_SIZE).configure_title(
                limit=limit, subtitleColor=subtitle
            ),
            width="content",
        )


def refusal(exc: StorageError) -> None:
    """A write that was refused or failed: one plain line (the message as written, shown as
    typed), never a traceback and never the "could not be read" heading."""
    st.error(escape_markdown(" ".join(str(exc).split())), icon=":material/block:")


def storage_failure(exc: StorageError, *, brief: bool = False) -> None:
    """The database could not be read or written: say so, and what to do."""
    if isinstance(exc, db_gateway.WriteRefused):
        refusal(exc)
        return
    if brief:
        st.error("The database could not be read; see the page.", icon=":material/database:")
        return
    st.error(
        f"**The database could not be read.**\n\n{escape_markdown(str(exc))}",
        icon=":material/database:",
    )
    if not isinstance(exc, SchemaVersionError):  # that message names its own fix
        st.info(
            # The path or URL is typed text: escaped, not a code span (a backtick would end it).
            f"Check that the database is reachable (now: "
            f"{escape_markdown(db_gateway.database_for_people())}), then reload the page. "
            "Open another database with `gradscope dashboard --db PATH_OR_URL`."
        )


def guarded(body: Callable[P, None], *, brief: bool = False) -> Callable[P, None]:
    """`body` with database failures shown by `storage_failure`. Fragments need this: an
    exception inside one stops at the fragment and never reaches the app's own handler."""

    @functools.wraps(body)
    def run(*args: P.args, **kwargs: P.kwargs) -> None:
        try:
            body(*args, **kwargs)
        except StorageError as exc:
            storage_failure(exc, brief=brief)

    return run


def database_changed_notice() -> None:
    """On every page: a warning when the database file was deleted or replaced since the
    dashboard opened it (writes are refused meanwhile), with a button that reconnects."""
    changed = db_gateway.file_changed()
    if not changed:
        return
    st.warning(
        f"{escape_markdown(changed)} The pages show what it held then; queueing, cancelling, "
        "deleting and importing are refused until you reconnect.",
        icon=":material/sync_problem:",
    )
    if st.button("Reconnect", key="reconnect_database", help="Open the file at that path now"):
        db_gateway.reconnect()
        st.rerun()
