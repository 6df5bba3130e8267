"""Sweeps: a sweep's gradient ratio and final accuracy against any swept setting (depth by
default), one line per value of another (architecture by default), seeds aggregated (median
with a min-max band); the settings every run shares are listed."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from gradscope.dashboard import charts, db_gateway, state, view
from gradscope.dashboard.tables import MISSING, escape_markdown

st.title("Sweeps")
# The sweeps and the chosen one's runs only: never the list of every run (100,000 at scale).
sweeps = db_gateway.sweeps().set_index("sweep_id")
if sweeps.empty:
    st.info(
        "No sweeps yet. Queue one with the sidebar's **New sweep** form, or in a terminal: "
        "`gradscope sweep --arch sigmoid,relu,resnet --depth 2,5,10,20 --seed 0,1,2`.",
        icon=":material/grid_view:",
    )
    st.stop()

ids = list(sweeps.index)
state.bound_widget_value("sweep_pick", state.choice_param(state.SWEEP, ids, ids[0]))
sweep_id = st.selectbox(
    "Sweep",
    ids,
    key="sweep_pick",
    format_func=lambda i: (
        f"{sweeps.at[i, 'name'] or 'unnamed'} ({sweeps.at[i, 'runs']} runs, "
        f"{sweeps.at[i, 'created']:%Y-%m-%d %H:%M})"
    ),
)
state.set_param(state.SWEEP, sweep_id)
info = sweeps.loc[sweep_id]
st.caption(f"{info['finished']} of {info['runs']} runs finished.")

summary = db_gateway.sweep_summary(sweep_id)
configs = db_gateway.sweep_configs(sweep_id)
settings = pd.DataFrame([configs.get(i, {}) for i in summary["run_id"]], index=summary.index)
settings = settings.drop(columns=[c for c in ("name",) if c in settings])
distinct = {c: settings[c].astype(str).nunique() for c in settings.columns}
swept = [c for c in settings.columns if distinct[c] > 1 and c != "seed"]
fixed = {c: settings[c].iloc[0] for c in settings.columns if distinct[c] == 1}
if swept:
    # Any swept setting on the x-axis, coloured by another (architecture when it was swept).
    for column in swept:
        if column not in ("arch", "depth", "seed"):
            summary[column] = settings[column].to_numpy()
    left, right = st.columns(2)
    default_x = "depth" if "depth" in swept else swept[0]
    x = left.selectbox("x-axis", swept, index=swept.index(default_x), key="sweep_x")
    others = [c for c in swept if c != x]
    colour_options = others or ["arch"]
    default_c = "arch" if "arch" in colour_options else colour_options[0]
    color = right.selectbox(
        "Colour by", colour_options, index=colour_options.index(default_c), key="sweep_colour"
    )
else:
    x, color = "depth", "arch"
left, right = st.columns(2)
with left:
    view.chart(charts.sweep_grad_ratio(summary, x, color))
    st.caption(
        "log10 of the first layer's gradient norm over the output layer's at epoch 1: "
        "-3 means the first layer gets a gradient 1000x smaller."
    )
with right:
    view.chart(charts.sweep_accuracy(summary, x, color))
    st.caption("Final test accuracy; 0.5 is chance on these balanced datasets.")
others_swept = [c for c in swept if c not in (x, color)]
if others_swept:
    st.caption(
        escape_markdown(
            "Each point is the median over seeds and over the other swept settings ("
            + ", ".join(others_swept)
            + ")."
        )
    )
st.caption(escape_markdown("Fixed settings: " + ", ".join(f"{k} = {v}" for k, v in fixed.items())))
with st.expander("Per-run numbers"):
    st.dataframe(
        summary.drop(columns="run_id"), hide_index=True, width="stretch", placeholder=MISSING
    )
