"""gradscope's dashboard: `gradscope dashboard` runs `streamlit run` on this file
(installed as gradscope/dashboard/app.py).

A router: the pages (one file each under app_pages/), the sidebar, and one place that turns
database failures into a message saying what to do instead of a traceback.

The folder is not called `pages/`: next to the entry script that name switches on Streamlit's
older directory-based navigation, and a fresh server then answers a first visit to a deep link
(/compare?runs=...) with that page alone, without this router.
"""

from __future__ import annotations

from pathlib import Path

import altair.utils.schemapi
import streamlit as st

from gradscope.dashboard import db_gateway, sidebar, view
from gradscope.db.errors import StorageError

# A local image: a Material icon as page_icon is fetched from Google's font CDN on every rerun,
# and a local tool makes no outbound requests.
FAVICON = Path(__file__).resolve().parent / "favicon.png"
st.set_page_config(page_title="gradscope", page_icon=str(FAVICON), layout="wide")
# Altair validates every chart object as it is built ("debug mode": readable tracebacks while
# writing a chart) and the whole spec again when Streamlit serialises it. Once is enough: the
# first pass was ~15% of a cold Compare render of 100 runs (benchmarks/dashboard.py --scale).
altair.utils.schemapi.disable_debug_mode()

PAGES = [
    st.Page("app_pages/runs.py", title="Runs", icon=":material/table_rows:", default=True),
    st.Page("app_pages/compare.py", title="Compare", icon=":material/compare_arrows:"),
    st.Page("app_pages/sweeps.py", title="Sweeps", icon=":material/stacked_line_chart:"),
    st.Page("app_pages/share.py", title="Share", icon=":material/share:"),
]


page = st.navigation(PAGES)
# Set again by the Runs page when it is the one drawn (see db_gateway.TABLE_VERSION_KEY).
st.session_state.pop(db_gateway.TABLE_VERSION_KEY, None)
# The sidebar's queue reads the Runs table's frame only beside that table (db_gateway.queue).
st.session_state[db_gateway.RUNS_PAGE_SHOWN_KEY] = page.url_path == PAGES[0].url_path
try:
    view.database_changed_notice()
    sidebar.render()
    page.run()
except StorageError as exc:
    view.storage_failure(exc)
