"""Selections people share live in the URL (`st.query_params`), so a link reproduces a view:

- `runs`: the chosen run ids, comma-separated, in order;
- `epoch`, `layer`: the Compare page's chosen epoch and layer (histograms);
- `scale`: `log` or `linear` for the loss axis;
- `colour`: what the Compare page colours lines by (`run`, `architecture` or a setting);
- `group`: `seeds` when the Compare page groups seeds into one line each;
- `sweep`: the Sweeps page's sweep id.
- `page`: the Runs table's page (1-based).

The chosen runs are also kept in session state, so moving between pages through the navigation
menu (which starts each page with a clean URL) keeps them.
"""

from __future__ import annotations

from collections.abc import Sequence

import streamlit as st

RUNS = "runs"
EPOCH = "epoch"
LAYER = "layer"
SCALE = "scale"
COLOUR = "colour"
GROUP = "group"
SWEEP = "sweep"
PAGE = "page"  # the Runs table's page (1-based)
SCALES = ("linear", "log")
GROUPINGS = ("none", "seeds")
_SELECTED = "selected_runs"  # session-state copy of the chosen runs


def selected_runs() -> list[str]:
    """The chosen run ids: from the URL if it names any, else the last choice this session."""
    raw = st.query_params.get(RUNS, "")
    ids = [part.strip() for part in raw.split(",") if part.strip()]
    return ids or list(st.session_state.get(_SELECTED, []))


def select_runs(run_ids: Sequence[str]) -> None:
    """Remember the chosen runs in the URL and the session."""
    ids = list(dict.fromkeys(run_ids))
    st.session_state[_SELECTED] = ids
    if ids:
        st.query_params[RUNS] = ",".join(ids)
    else:
        st.query_params.pop(RUNS, None)


def runs_param(run_ids: Sequence[str]) -> dict[str, str]:
    """Query parameters that open a page on these runs (for st.switch_page / links)."""
    return {RUNS: ",".join(run_ids)}


def int_param(name: str, default: int, lo: int, hi: int) -> int:
    """An integer from the URL, clamped to [lo, hi]; `default` when absent or not a number."""
    raw = st.query_params.get(name, "")
    try:
        value = int(raw)
    except ValueError:
        value = default
    return max(lo, min(hi, value))


def choice_param(name: str, choices: Sequence[str], default: str) -> str:
    raw = st.query_params.get(name, "")
    return raw if raw in choices else default


def set_param(name: str, value: object) -> None:
    """Write one URL parameter (only when it changed, so the URL is not rewritten needlessly)."""
    text = str(value)
    if st.query_params.get(name) != text:
        st.query_params[name] = text


def bound_widget_value(key: str, url_value: object) -> None:
    """Start a keyed widget from the URL the first time it renders (later its own state wins).

    Called before the widget; a URL change from outside (a pasted link) reloads the page and so
    starts a new session, which reads the URL again.
    """
    if key not in st.session_state:
        st.session_state[key] = url_value
