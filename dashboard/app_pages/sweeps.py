"""Sweeps: a sweep's gradient ratio and final accuracy against depth, one line per architecture,
seeds aggregated (median with a min-max band)."""

from __future__ import annotations

import streamlit as st

from dashboard import charts, db_gateway, state, view
from vocab.fields import FINISHED_STATUSES

st.title("Sweeps")
runs = db_gateway.runs()
in_sweeps = runs[runs["sweep_id"].notna()]
if in_sweeps.empty:
    st.info(
        "No sweeps yet. Queue one with the sidebar's **New sweep** form, or in a terminal: "
        "`gradscope sweep --arch sigmoid,relu,resnet --depth 2,5,10,20 --seed 0,1,2`.",
        icon=":material/grid_view:",
    )
    st.stop()

sweeps = (
    in_sweeps.assign(finished=in_sweeps["status"].isin(FINISHED_STATUSES))
    .groupby("sweep_id", sort=False)
    .agg(
        name=("sweep_name", "first"),
        runs=("id", "size"),
        finished=("finished", "sum"),
        created=("created_at", "min"),
    )
    .sort_values("created", ascending=False)
)
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
left, right = st.columns(2)
with left:
    view.chart(charts.sweep_grad_ratio(summary))
    st.caption(
        "log10 of the first layer's gradient norm over the output layer's at epoch 1: "
        "-3 means the first layer gets a gradient 1000x smaller."
    )
with right:
    view.chart(charts.sweep_accuracy(summary))
    st.caption("Final test accuracy; 0.5 is chance on these balanced datasets.")
with st.expander("Per-run numbers"):
    st.dataframe(summary.drop(columns="run_id"), hide_index=True, width="stretch")
