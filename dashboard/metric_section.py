"""The Compare page's "Logged metrics" section: the free metrics (`run.log`) of the chosen runs,
picked by name, train/test pairs in one chart, on a linear or log axis."""

from __future__ import annotations

import streamlit as st

from gradscope.dashboard import db_gateway, view
from gradscope.dashboard.colors import Colors
from gradscope.dashboard.metric_charts import metric_chart
from gradscope.vocab.metrics import metric_panels

SHOWN_FIRST = 6  # charts shown before any is picked


def panel_labels(names: list[str]) -> dict[str, list[str]]:
    """Picker label -> the names its chart holds; a title two panels share is spelled out."""
    panels = metric_panels(names)
    titles = [t for t, _ in panels]
    return {(t if titles.count(t) == 1 else " & ".join(members)): members for t, members in panels}


def metrics_section(sel: db_gateway.Selection, colors: Colors | None) -> None:
    """Nothing when no chosen run logged a free metric."""
    frame = db_gateway.metrics(sel)
    if frame.empty:
        return
    st.subheader("Logged metrics")
    panels = panel_labels(sorted(set(frame["name"])))  # the same order whatever the runs
    labels = list(panels)
    left, right = st.columns([4, 1])
    with left:
        chosen = st.multiselect(
            "Metrics", labels, default=labels[:SHOWN_FIRST], key="compare_metrics"
        )
    with right:
        log = st.toggle("Log axis", key="compare_metrics_log")
    for start in range(0, len(chosen), 2):
        for column, label in zip(st.columns(2), chosen[start : start + 2], strict=False):
            with column:
                rows = frame[frame["name"].isin(panels[label])]
                view.chart(metric_chart(rows, label, colors, log=log))
