"""gradscope's dashboard: `gradscope dashboard` runs `streamlit run dashboard/app.py`.

A router: the pages (one file each under pages/), the sidebar, and one place that turns database
failures into a message saying what to do instead of a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `streamlit run dashboard/app.py` puts dashboard/ on sys.path, not the project: add it, so the
# app also runs from a checkout that was not pip-installed.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import streamlit as st  # noqa: E402

from dashboard import data, sidebar  # noqa: E402
from dashboard.tables import escape_markdown  # noqa: E402
from db.errors import SchemaVersionError, StorageError  # noqa: E402

st.set_page_config(page_title="gradscope", page_icon=":material/trending_down:", layout="wide")

PAGES = [
    st.Page("pages/runs.py", title="Runs", icon=":material/table_rows:", default=True),
    st.Page("pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("pages/sweeps.py", title="Sweeps", icon=":material/stacked_line_chart:"),
    st.Page("pages/share.py", title="Share", icon=":material/share:"),
]


def _storage_failure(exc: StorageError) -> None:
    where = data.database_for_people()
    st.error(
        f"**The database could not be read.**\n\n{escape_markdown(str(exc))}",
        icon=":material/database:",
    )
    if isinstance(exc, SchemaVersionError):
        return  # its message already names the command that fixes it
    st.info(
        f"Check that the database is reachable (now: `{where}`), then reload the page. "
        "Start the dashboard on another database with `gradscope dashboard --db PATH_OR_URL`."
    )


page = st.navigation(PAGES)
try:
    sidebar.render()
    page.run()
except StorageError as exc:
    _storage_failure(exc)
