"""Charts of free metrics (`run.log`): pure functions, DataFrame in, Altair chart out.

One chart per panel (gradscope.vocab.metrics.metric_panels: a quantity's train/test/val names
together, any other name alone): colour = run, dash = name. A metric logged at most once per
epoch is drawn against the epoch; one logged more often, against the step. Non-finite values
cannot be drawn: they are counted in the subtitle, never silently dropped.
"""

from __future__ import annotations

from typing import Literal

import altair as alt
import numpy as np
import pandas as pd

from gradscope.dashboard.charts import EPOCH_AXIS, HEIGHT, _color
from gradscope.dashboard.colors import Colors

Axis = Literal["epoch", "step"]


def metric_axis(frame: pd.DataFrame) -> Axis:
    """ "epoch" when every run logged each of these names at most once per epoch (a per-epoch
    curve), else "step"."""
    if frame.empty or frame["epoch"].isna().any():
        return "step"
    per_epoch = frame.groupby(["run_id", "name", "epoch"]).size()
    return "epoch" if int(per_epoch.max()) <= 1 else "step"


def metric_chart(
    frame: pd.DataFrame, title: str, colors: Colors | None = None, *, log: bool = False
) -> alt.Chart:
    """The rows of one panel (run_id, run_label, name, step, epoch, value) as lines: colour =
    run, dash = name (a legend of its own when the panel pairs several names)."""
    axis = metric_axis(frame)
    data = frame[["run_id", "run_label", "name", axis, "value"]].copy()
    values = data["value"].to_numpy(dtype=float)
    drawable = np.isfinite(values) & ((values > 0) if log else True)
    dropped = int((~drawable).sum())
    data = data[drawable & data[axis].notna().to_numpy()]
    notes = []
    if dropped:
        what = "non-finite or non-positive" if log else "non-finite"
        notes.append(f"{dropped} {what} value(s) not drawn")
    names = list(dict.fromkeys(frame["name"]))
    y_title = f"{title} (log scale)" if log else title
    scale = alt.Scale(type="log") if log else alt.Scale(zero=False)
    x = (
        alt.X("epoch:Q", title="epoch", axis=EPOCH_AXIS)
        if axis == "epoch"
        else alt.X("step:Q", title="step")
    )
    colors = colors if colors is not None and colors.field == "run_label" else None
    chart = alt.Chart(data).encode(
        x=x,
        y=alt.Y("value:Q", title=y_title, scale=scale),
        color=_color(colors),
        detail=alt.Detail("run_id:N"),
        tooltip=[
            alt.Tooltip("run_label:N", title="run"),
            alt.Tooltip("name:N", title="metric"),
            alt.Tooltip(f"{axis}:Q", title=axis),
            alt.Tooltip("value:Q", title="value", format=".4g"),
        ],
    )
    if len(names) > 1:
        chart = chart.encode(
            strokeDash=alt.StrokeDash("name:N", title="metric", sort=names),
            shape=alt.Shape("name:N", title="metric", sort=names),
        )
    mark = chart.mark_line(point=axis == "epoch")
    return mark.properties(
        title=alt.Title(title, subtitle="; ".join(notes) if notes else ""),
        width="container",
        height=HEIGHT,
    )
