"""Pure chart builders: pandas DataFrame in, Altair chart out (no Streamlit, no database).

Every chart colours its lines as `colors` (gradscope.dashboard.colors.Colors) says: by default one
colour
per `run_label`; pages pass each run's own colour, or colour by architecture or a config field
(a `colour` column in the data), and may hide the legend to show one shared legend instead.
Lines are drawn per `run_id` (a seed group's id when seeds are grouped); where the data has
`<field>_lo` and `<field>_hi` columns (grouped seeds: min and max) a band is drawn under the line
(the median). Log-scale charts drop zero, negative and
non-finite values in pandas before plotting (a log scale cannot show them; zero gradients are
float32 underflow in deep sigmoid nets, inf/NaN come from diverged runs) and say how many were
dropped in the subtitle; except the prediction spread, whose zeros are the collapsed runs it
exists to show: it draws them at a marked floor below every real value. Single-view charts use
`width="container"` so pages can stretch them.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Literal

import altair as alt
import numpy as np
import pandas as pd

from gradscope.analysis.diagnosis import CHANCE_ACC, COLLAPSE_PRED_STD, VANISH_FACTOR
from gradscope.dashboard.colors import ARCH_COLORS, PALETTE, Colors, value_colors

HEIGHT = 260
CONCAT_WIDTH = 320  # concatenated views cannot use width="container"
EPOCH_AXIS = alt.Axis(tickMinStep=1, format="d")
# What a loss axis says: built-in runs train binary classifiers; a run recorded with the API
# logged whatever loss its user computes (multi-class, regression...).
BUILT_IN_LOSS = "binary cross-entropy (nats)"
LOGGED_LOSS = "loss as logged"
MIXED_LOSS = "loss as logged (built-in runs: binary cross-entropy)"
LAYER_AXIS = alt.Axis(tickMinStep=1, format="d")
# One column: two columns of long run names overflow the half-width charts on Compare.
_RUN_LEGEND = alt.Legend(orient="bottom", columns=1, labelLimit=480)
# Dash legends drawn as dashed strokes, so "train" and "test" are told apart in the legend.
# Grey symbols: the colour is the run's (one shared legend), and grey reads on both themes.
_DASH_LEGEND = alt.Legend(
    symbolType="stroke", symbolStrokeWidth=2, symbolSize=300, symbolStrokeColor="#8a8d93"
)
# The Sweeps charts' legend: a line and a dot in the line's own colour, fully opaque.
_SWEEP_LEGEND = alt.Legend(symbolType="stroke", symbolStrokeWidth=3, symbolOpacity=1)
# 1e-7 style on every log axis (d3's default mixes 0.000001 and 1e-7).
LOG_FORMAT = "~e"
BAND_OPACITY = 0.18


def _color(colors: Colors | None) -> alt.Color:
    colors = colors or Colors()
    if colors.domain:
        scale = alt.Scale(domain=list(colors.domain), range=list(colors.range))
    else:
        scale = alt.Scale(range=list(PALETTE))
    legend = _RUN_LEGEND if colors.legend else None
    return alt.Color(f"{colors.field}:N", title=colors.title, scale=scale, legend=legend)


def _ids(frame: pd.DataFrame, colors: Colors | None) -> list[str]:
    """The id columns a chart keeps: run_id, run_label and the colour key column."""
    cols = ["run_id", "run_label"]
    field = (colors or Colors()).field
    cols = cols if field in cols or field not in frame else [*cols, field]
    return [*cols, "seeds"] if "seeds" in frame else cols  # grouped seeds: for the tooltip


def _run_tips(frame: pd.DataFrame) -> list[alt.Tooltip]:
    """The tooltip lines naming a point's run, or its seed group and how many seeds the point
    is the median of (fewer than the group holds where a seed has not recorded it yet)."""
    tips = [alt.Tooltip("run_label:N", title="run")]
    return (
        [*tips, alt.Tooltip("seeds:Q", title="seeds in this point")] if "seeds" in frame else tips
    )


def _bands(frame: pd.DataFrame, *fields: str) -> list[str]:
    """The min/max columns of grouped seeds present for these fields."""
    return [f"{f}_{end}" for f in fields for end in ("lo", "hi") if f"{f}_lo" in frame]


def _per_line(field: str) -> list[alt.Detail]:
    return [alt.Detail("run_id:N"), alt.Detail(f"{field}:N")]


def _dashed_with_points(
    base: alt.Chart, field: str, title: str, band: alt.Chart | None = None
) -> alt.LayerChart:
    """Lines dashed by `field` with a dot at each value (and a band under them, if given).
    Two layers, not mark_line(point=True): a line's overlaid points make Vega-Lite draw the
    dash legend's symbols as (invisible or identical) dots; a plain line layer gets a legend
    of dashed strokes."""
    line = base.mark_line().encode(
        strokeDash=alt.StrokeDash(f"{field}:N", title=title, legend=_DASH_LEGEND),
        detail=_per_line(field),
    )
    dots = base.mark_point(filled=True, size=30).encode(detail=_per_line(field))
    return alt.layer(*([band] if band is not None else []), line, dots)


def _log_y(field: str, title: str) -> alt.Y:
    return alt.Y(
        f"{field}:Q", title=title, scale=alt.Scale(type="log"), axis=alt.Axis(format=LOG_FORMAT)
    )


def _band(
    base: alt.Chart, data: pd.DataFrame, field: str, y: alt.Y, detail: list | None = None
) -> alt.Chart | None:
    """The min-max band of grouped seeds under a line (None when the data has no band)."""
    if f"{field}_lo" not in data:
        return None
    band_y = alt.Y(**{**y.to_dict(), "field": f"{field}_lo"})  # the line's axis and scale
    encoding = {"y": band_y, "y2": f"{field}_hi:Q", "tooltip": alt.value(None)}
    if detail is not None:
        encoding["detail"] = detail
    return base.mark_area(opacity=BAND_OPACITY).encode(**encoding)


def _with_band(line: alt.Chart, data: pd.DataFrame, field: str, y: alt.Y) -> alt.Chart:
    """`line` with a min-max band under it when the data holds grouped seeds."""
    band = _band(line, data, field, y)
    return line if band is None else alt.layer(band, line)


def _finite(frame: pd.DataFrame, column: str, *, positive: bool) -> tuple[pd.DataFrame, int]:
    """Rows whose `column` is finite (and > 0 if `positive`), and how many were dropped."""
    values = pd.to_numeric(frame[column], errors="coerce").astype(float)
    keep = np.isfinite(values.to_numpy())
    if positive:
        keep &= values.to_numpy() > 0
    return frame.loc[keep].reset_index(drop=True), int((~keep).sum())


def _log_note(dropped: int) -> str:
    if dropped == 0:
        return "log scale"
    return f"log scale: {dropped} zero or non-finite value(s) not drawn"


def _at_epoch(layers: pd.DataFrame, epoch: int | None) -> tuple[pd.DataFrame, str]:
    """Rows at one epoch, or at each run's last epoch when `epoch` is None."""
    if epoch is not None:
        return layers[layers["epoch"] == epoch], f"epoch {epoch}"
    last = layers.groupby("run_id")["epoch"].transform("max")
    return layers[layers["epoch"] == last], "each run's last epoch"


def _one_run(frame: pd.DataFrame, what: str) -> str:
    runs = frame["run_id"].unique()
    if len(runs) != 1:
        raise ValueError(f"{what} shows exactly one run; got {len(runs)}")
    return str(frame["run_label"].iloc[0])


# --- Per-epoch curves ---------------------------------------------------------------------------


def _curves(
    epochs: pd.DataFrame,
    stem: Literal["loss", "acc"],
    colors: Colors | None = None,
    log: bool = False,
    loss_title: str = BUILT_IN_LOSS,
    unlogged: Collection[str] = (),
) -> alt.Chart | alt.LayerChart:
    ids = _ids(epochs, colors)
    fields = [f"train_{stem}", f"test_{stem}"]
    long = epochs.melt(
        id_vars=[*ids, "epoch"], value_vars=fields, var_name="split", value_name="value"
    )
    # "train_loss" -> "train": a map over the two names, not a string split per row.
    long["split"] = long["split"].map({f: f.split("_")[0] for f in fields})
    for end in ("lo", "hi") if f"train_{stem}_lo" in epochs else ():  # grouped seeds: the band
        long[f"value_{end}"] = np.concatenate([epochs[f"{f}_{end}"].to_numpy() for f in fields])
    long = long[~never_logged(long, unlogged)].reset_index(drop=True)
    long, dropped = _finite(long, "value", positive=log)
    note = f"{dropped} non-finite value(s) (diverged) not drawn" if dropped else ""
    if stem == "loss" and log:
        title, y = "Loss", _log_y("value", f"{loss_title} (log scale)")
    elif stem == "loss":
        title, y = "Loss", alt.Y("value:Q", title=loss_title)
    else:
        title = "Accuracy"
        y = alt.Y("value:Q", title="accuracy (fraction correct)", scale=alt.Scale(domain=[0, 1]))
    base = alt.Chart(long).encode(
        x=alt.X("epoch:Q", title="epoch", axis=EPOCH_AXIS),
        y=y,
        color=_color(colors),
        detail=alt.Detail("run_id:N"),
        tooltip=[
            *_run_tips(long),
            alt.Tooltip("epoch:Q"),
            alt.Tooltip("split:N"),
            alt.Tooltip("value:Q", title=title.lower(), format=".4f"),
        ],
    )
    band = _band(base, long, "value", y, _per_line("split"))
    return _dashed_with_points(base, "split", "split", band).properties(
        title=alt.Title(f"{title}: train vs test", subtitle=note),
        width="container",
        height=HEIGHT,
    )


def never_logged(long: pd.DataFrame, unlogged: Collection[str]) -> pd.Series:
    """Rows of a run in `unlogged` (runs recorded with the API, which log what they choose)
    whose whole series (run, split) is empty: never logged, which is no divergence (a NaN
    is stored as NULL too, but a diverged run has finite values before it)."""
    empty = pd.to_numeric(long["value"], errors="coerce").isna()
    whole = empty.groupby([long["run_id"], long["split"]]).transform("all")
    return whole & long["run_id"].isin(list(unlogged))


def logged_curve(epochs: pd.DataFrame, stem: str, unlogged: Collection[str]) -> bool:
    """Whether any run has a value of train_/test_`stem` to draw: a run not in `unlogged`
    (built-in: every empty value is a diverged one), or an API run that logged one."""
    cols = [f"train_{stem}", f"test_{stem}"]
    built_in = ~epochs["run_id"].isin(list(unlogged))
    values = epochs[cols].apply(pd.to_numeric, errors="coerce")
    return bool(built_in.any() or values.notna().any(axis=None))


def loss_title(archs: pd.Series) -> str:
    """The loss axis's title for runs of these archs ("custom": recorded with the API)."""
    custom = archs.eq("custom")
    return LOGGED_LOSS if custom.all() else MIXED_LOSS if custom.any() else BUILT_IN_LOSS


def loss_curves(
    epochs: pd.DataFrame,
    colors: Colors | None = None,
    *,
    log: bool = False,
    loss_title: str = BUILT_IN_LOSS,
    unlogged: Collection[str] = (),
) -> alt.Chart:
    """Train and test loss per epoch (log axis if `log`); colour = run, dash and marker = split.
    `loss_title` names the loss (runs recorded with the API logged their own); a split that a
    run in `unlogged` never logged is left out, not counted as diverged."""
    return _curves(epochs, "loss", colors, log, loss_title, unlogged)


def accuracy_curves(
    epochs: pd.DataFrame, colors: Colors | None = None, *, unlogged: Collection[str] = ()
) -> alt.Chart:
    """Train and test accuracy per epoch on a fixed 0-1 axis; colour = run, dash = split."""
    return _curves(epochs, "acc", colors, unlogged=unlogged)


def learning_curves(epochs: pd.DataFrame) -> alt.HConcatChart:
    """Loss and accuracy side by side."""
    return alt.hconcat(
        loss_curves(epochs).properties(width=CONCAT_WIDTH),
        accuracy_curves(epochs).properties(width=CONCAT_WIDTH),
    )


FLOOR_SHAPE = "triangle-down"
FLOOR_COLOR = "#8a8d93"  # grey: reads on both themes


def spread_floor(values: pd.Series) -> float:
    """Where the prediction spread draws values a log axis cannot show (exactly 0: a constant
    output; NaN/inf: a diverged run): a whole decade below every positive finite value and
    below the collapse threshold, so nothing real is drawn at or under it."""
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    real = numbers[np.isfinite(numbers) & (numbers > 0)]
    lowest = min(float(real.min()), COLLAPSE_PRED_STD) if real.size else COLLAPSE_PRED_STD
    return float(10.0 ** (math.floor(math.log10(lowest)) - 1))


def _recorded_text(value: float) -> str:
    """A recorded value for the tooltip, as it was (0, NaN and inf included)."""
    if value == 0:
        return "0 (constant output)"
    if not math.isfinite(value):
        return f"{value} (diverged)"
    return f"{value:.2e}"


def prediction_spread(
    epochs: pd.DataFrame,
    colors: Colors | None = None,
    *,
    what: str = "std of predicted probability",
) -> alt.LayerChart:
    """Std of predicted probabilities per epoch (log), with the collapse threshold as a rule;
    `what` names the spread (a run recorded with the API: of its outputs on the probe batch).

    Zero (a constant output: the collapse this chart exists to show), negative and non-finite
    values are drawn at `spread_floor` with a marker of their own and a labelled rule, not
    dropped; the tooltip gives the value as recorded."""
    cols = [*_ids(epochs, colors), "epoch", "pred_std", *_bands(epochs, "pred_std")]
    data = epochs[cols].reset_index(drop=True).copy()
    recorded = pd.to_numeric(data["pred_std"], errors="coerce").to_numpy(dtype=float)
    floor = spread_floor(data["pred_std"])
    drawable = np.isfinite(recorded) & (recorded > 0)
    for column in ("pred_std", *_bands(data, "pred_std")):
        values = pd.to_numeric(data[column], errors="coerce").to_numpy(dtype=float)
        data[column] = np.where(np.isfinite(values) & (values > 0), values, floor)
    data["recorded"] = [_recorded_text(v) for v in recorded]
    data["at_floor"] = ~drawable
    n_floor = int((~drawable).sum())
    y = _log_y("pred_std", f"{what} (log scale)")
    tips = [
        *_run_tips(data),
        alt.Tooltip("epoch:Q"),
        alt.Tooltip("recorded:N", title="pred std"),
    ]
    line = (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(
            x=alt.X("epoch:Q", title="epoch", axis=EPOCH_AXIS),
            y=y,
            color=_color(colors),
            detail=alt.Detail("run_id:N"),
            tooltip=tips,
        )
    )
    floor_data = pd.DataFrame({"floor": [floor], "meaning": ["0 or non-finite drawn here"]})
    floor_y = alt.Y(**{**y.to_dict(), "field": "floor"})
    floor_rule = (
        alt.Chart(floor_data)
        .mark_rule(strokeDash=[1, 3], color=FLOOR_COLOR)
        .encode(y=floor_y, tooltip=[alt.Tooltip("meaning:N")])
    )
    floor_label = (
        alt.Chart(floor_data)
        .mark_text(align="left", baseline="bottom", dx=4, dy=-2, color=FLOOR_COLOR, fontSize=11)
        .encode(x=alt.value(0), y=floor_y, text=alt.value("0 / non-finite"))
    )
    at_floor = (
        alt.Chart(data[data["at_floor"]].reset_index(drop=True))
        .mark_point(shape=FLOOR_SHAPE, filled=True, size=90, opacity=1)
        .encode(
            x=alt.X("epoch:Q", title="epoch", axis=EPOCH_AXIS),
            y=y,
            color=_color(colors),
            detail=alt.Detail("run_id:N"),
            tooltip=tips,
        )
    )
    rule = (
        alt.Chart(pd.DataFrame({"threshold": [COLLAPSE_PRED_STD], "meaning": ["collapse"]}))
        .mark_rule(strokeDash=[4, 4], color="gray")
        .encode(
            y=alt.Y(**{**y.to_dict(), "field": "threshold"}),
            tooltip=[alt.Tooltip("meaning:N"), alt.Tooltip("threshold:Q", format=".0e")],
        )
    )
    floor_note = (
        f"log scale: {n_floor} value(s) exactly 0 (constant output) or non-finite drawn as "
        f"triangles on the dotted floor line ({floor:.0e})"
        if n_floor
        else "log scale"
    )
    subtitle = [
        f"Below the dashed line ({COLLAPSE_PRED_STD:.0e}) the model gives ~the same output "
        "for every input",
        floor_note,
    ]
    layers = [_with_band(line, data, "pred_std", y), rule, floor_rule, floor_label, at_floor]
    return alt.layer(*layers).properties(
        title=alt.Title("Prediction spread", subtitle=subtitle), width="container", height=HEIGHT
    )


# --- Per-layer pictures -------------------------------------------------------------------------


def _per_layer(
    layers: pd.DataFrame,
    epoch: int | None,
    field: str,
    title: str,
    y_title: str,
    tip: str,
    colors: Colors | None,
) -> alt.Chart | alt.LayerChart:
    """A log-scale line per run of `field` against layer index at one epoch."""
    at, when = _at_epoch(layers, epoch)
    cols = [*_ids(at, colors), "epoch", "layer", field, *_bands(at, field)]
    data, dropped = _finite(at[cols], field, positive=True)
    y = _log_y(field, y_title)
    line = (
        alt.Chart(data)
        .mark_line(point=True)
        .encode(
            x=alt.X("layer:Q", title="layer (0 = input side, output last)", axis=LAYER_AXIS),
            y=y,
            color=_color(colors),
            detail=alt.Detail("run_id:N"),
            tooltip=[
                *_run_tips(data),
                alt.Tooltip("epoch:Q"),
                alt.Tooltip("layer:Q"),
                alt.Tooltip(f"{field}:Q", title=tip, format=".2e"),
            ],
        )
    )
    return _with_band(line, data, field, y).properties(
        title=alt.Title(title, subtitle=f"{when}; {_log_note(dropped)}"),
        width="container",
        height=HEIGHT,
    )


def gradient_flow(
    layers: pd.DataFrame, epoch: int | None = 1, colors: Colors | None = None
) -> alt.Chart | alt.LayerChart:
    """Gradient norm (log) against layer index at one epoch, one line per run.

    `epoch=None` takes each run's last epoch. A line falling towards layer 0 is vanishing.
    """
    return _per_layer(
        layers,
        epoch,
        "grad_norm",
        "Gradient flow",
        "weight-gradient L2 norm",
        "grad norm",
        colors,
    )


def shared_log10_domain(layers: pd.DataFrame, column: str = "grad_norm") -> tuple[float, float]:
    """Whole-decade [min, max] of log10(`column`) over all runs, ignoring zero and non-finite."""
    values, _ = _finite(layers[[column]], column, positive=True)
    if values.empty:
        return (-1.0, 0.0)
    logs = np.log10(values[column].to_numpy(dtype=float))
    lo, hi = math.floor(logs.min()), math.ceil(logs.max())
    return (float(lo), float(hi if hi > lo else lo + 1))


def grad_heatmap(layers: pd.DataFrame, domain: tuple[float, float]) -> alt.Chart:
    """Layer x epoch heatmap of log10 grad norm for one run, coloured on the given `domain`.

    Pass the same `domain` (see `shared_log10_domain`) to every run shown side by side.
    """
    label = _one_run(layers, "grad_heatmap")
    data, dropped = _finite(layers[["epoch", "layer", "grad_norm"]], "grad_norm", positive=True)
    data["log10_grad_norm"] = np.log10(data["grad_norm"].to_numpy(dtype=float))
    n_layers = int(layers["layer"].nunique())
    blank = f"{dropped} cell(s) with zero or non-finite norm left blank" if dropped else ""
    return (
        alt.Chart(data, title=alt.Title(label, subtitle=blank))  # the section names the measure
        .mark_rect()
        .encode(
            x=alt.X("epoch:O", title="epoch"),
            y=alt.Y("layer:O", title="layer (output at top)", sort="descending"),
            color=alt.Color(
                "log10_grad_norm:Q",
                title="log10 norm",
                scale=alt.Scale(domain=list(domain), scheme="viridis", clamp=True),
            ),
            tooltip=[
                alt.Tooltip("epoch:O"),
                alt.Tooltip("layer:O"),
                alt.Tooltip("grad_norm:Q", title="grad norm", format=".2e"),
                alt.Tooltip("log10_grad_norm:Q", title="log10", format=".2f"),
            ],
        )
        .properties(width="container", height=min(480, max(160, 18 * n_layers)))
    )


def grad_histograms(hist: pd.DataFrame, colors: Colors | None = None) -> alt.Chart:
    """Overlaid histograms of log10|g|: fraction of gradient entries per bin, one colour per run."""
    cols = [*_ids(hist, colors), "bin_left", "bin_right", "count", "fraction"]
    data = hist[cols]
    keep = np.isfinite(data[["bin_left", "bin_right", "fraction"]].to_numpy(dtype=float)).all(1)
    dropped = int((~keep).sum())
    note = f"{dropped} bin(s) with non-finite edges not drawn" if dropped else ""
    return (
        alt.Chart(
            data.loc[keep].reset_index(drop=True),
            title=alt.Title("Gradient magnitudes", subtitle=note),
        )
        .mark_bar(opacity=0.45, binSpacing=0)
        .encode(
            x=alt.X("bin_left:Q", title="log10 |gradient entry|"),
            x2="bin_right:Q",
            y=alt.Y("fraction:Q", title="fraction of entries", stack=None),
            # With x2 set and no y2, Vega-Lite draws thin horizontal bars at each fraction.
            y2=alt.datum(0),
            color=_color(colors),
            detail=alt.Detail("run_id:N"),
            tooltip=[
                *_run_tips(data),
                alt.Tooltip("bin_left:Q", title="from log10", format=".2f"),
                alt.Tooltip("bin_right:Q", title="to log10", format=".2f"),
                alt.Tooltip("count:Q"),
                alt.Tooltip("fraction:Q", format=".2%"),
            ],
        )
        .properties(width="container", height=HEIGHT)
    )


def activation_spread(
    layers: pd.DataFrame, epoch: int | None = None, colors: Colors | None = None
) -> alt.Chart | alt.LayerChart:
    """Std of activations across inputs per layer (log): shrinking means the signal contracts."""
    return _per_layer(
        layers, epoch, "act_std", "Activation spread", "std of activations", "act std", colors
    )


def unit_health(
    layers: pd.DataFrame, epoch: int | None = None, colors: Colors | None = None
) -> alt.Chart:
    """Fraction of saturated (sigmoid) and dead (ReLU) units per hidden layer; NaN = not
    applicable. The output layer has no activation: it is left out (it drew lone dots)."""
    at, when = _at_epoch(layers, epoch)
    hidden = at[at["layer"] < at.groupby("run_id")["layer"].transform("max")]
    long = hidden.melt(
        id_vars=[*_ids(hidden, colors), "epoch", "layer"],
        value_vars=["saturated_frac", "dead_frac"],
        var_name="measure",
        value_name="fraction",
    )
    long["measure"] = long["measure"].map({"saturated_frac": "saturated", "dead_frac": "dead"})
    long, _ = _finite(long, "fraction", positive=False)  # NaN: not measured for this activation
    base = alt.Chart(long).encode(
        x=alt.X("layer:Q", title="layer (0 = input side, output last)", axis=LAYER_AXIS),
        y=alt.Y("fraction:Q", title="fraction of units", scale=alt.Scale(domain=[0, 1])),
        color=_color(colors),
        detail=alt.Detail("run_id:N"),
        tooltip=[
            *_run_tips(long),
            alt.Tooltip("layer:Q"),
            alt.Tooltip("measure:N"),
            alt.Tooltip("fraction:Q", format=".1%"),
        ],
    )
    return _dashed_with_points(base, "measure", "units").properties(
        title=alt.Title("Saturated and dead units", subtitle=when),
        width="container",
        height=HEIGHT,
    )


def activation_health(layers: pd.DataFrame, epoch: int | None = None) -> alt.HConcatChart:
    """Activation spread and unit health side by side."""
    return alt.hconcat(
        activation_spread(layers, epoch).properties(width=CONCAT_WIDTH),
        unit_health(layers, epoch).properties(width=CONCAT_WIDTH),
    )


def legend(colors: Colors, columns: int = 3) -> alt.LayerChart:
    """One shared legend for a page's charts: a coloured line and its label per key, in
    `columns` columns (a chart, so labels stay text: never Markdown or HTML)."""
    n = len(colors.domain)
    rows = max(1, -(-n // columns))
    data = pd.DataFrame(
        {
            "key": list(colors.domain),
            "col": [i // rows for i in range(n)],
            "row": [i % rows for i in range(n)],
        }
    )
    x = alt.X("col:Q", axis=None, scale=alt.Scale(domain=[0, columns]))
    y = alt.Y("row:O", axis=None)
    color = alt.Color(
        "key:N",
        scale=alt.Scale(domain=list(colors.domain), range=list(colors.range)),
        legend=None,
    )
    base = alt.Chart(data).encode(
        x=x, y=y, color=color, tooltip=[alt.Tooltip("key:N", title=colors.title)]
    )
    marks = base.mark_tick(orient="horizontal", thickness=3, size=18, xOffset=0)
    # Labels in their run's colour: the palette is readable on both themes.
    text = base.mark_text(align="left", dx=16, limit=300, fontSize=12).encode(text="key:N")
    return alt.layer(marks, text).properties(
        title=alt.Title(colors.title, anchor="start", fontSize=12),
        width="container",
        height=18 * rows,
    )


# --- Decision boundary --------------------------------------------------------------------------


def _step(values: pd.Series) -> float:
    unique = np.unique(values.to_numpy(dtype=float))
    return float(np.median(np.diff(unique))) if len(unique) > 1 else 1.0


def decision_map(grid: pd.DataFrame, points: pd.DataFrame, size: int = 360) -> alt.LayerChart:
    """P(class 1) on the grid (diverging colours on [0, 1]) with the test points on top.

    Square `size` in pixels: a map distorts if stretched to the container's width.
    """
    label = _one_run(grid, "decision_map")
    cells, dropped = _finite(grid[["x", "y", "prob"]], "prob", positive=False)
    dx, dy = _step(grid["x"]), _step(grid["y"])
    cells = cells.assign(x0=cells["x"] - dx / 2, x1=cells["x"] + dx / 2)
    cells = cells.assign(y0=cells["y"] - dy / 2, y1=cells["y"] + dy / 2)
    x_scale = alt.Scale(domain=[grid["x"].min() - dx / 2, grid["x"].max() + dx / 2], nice=False)
    y_scale = alt.Scale(domain=[grid["y"].min() - dy / 2, grid["y"].max() + dy / 2], nice=False)
    heat = (
        alt.Chart(cells)
        .mark_rect()
        .encode(
            x=alt.X("x0:Q", title="feature 1 (standardised)", scale=x_scale),
            x2="x1:Q",
            y=alt.Y("y0:Q", title="feature 2 (standardised)", scale=y_scale),
            y2="y1:Q",
            color=alt.Color(
                "prob:Q",
                title="P(class 1)",
                scale=alt.Scale(domain=[0, 1], domainMid=0.5, scheme="blueorange"),
            ),
            tooltip=[
                alt.Tooltip("x:Q", format=".2f"),
                alt.Tooltip("y:Q", format=".2f"),
                alt.Tooltip("prob:Q", title="P(class 1)", format=".3f"),
            ],
        )
    )
    dots = (
        alt.Chart(points[["x", "y", "label"]].reset_index(drop=True))
        .mark_point(filled=True, size=28, stroke="white", strokeWidth=0.6, opacity=0.9)
        .encode(
            x=alt.X("x:Q", scale=x_scale),
            y=alt.Y("y:Q", scale=y_scale),
            shape=alt.Shape("label:N", title="test label"),
            fill=alt.Fill(
                "label:N",
                title="test label",
                scale=alt.Scale(domain=[0, 1], range=["#08519c", "#a63603"]),
            ),
            tooltip=[alt.Tooltip("x:Q", format=".2f"), alt.Tooltip("y:Q", format=".2f"), "label:N"],
        )
    )
    note = f"{dropped} cell(s) with non-finite probability left blank" if dropped else ""
    return alt.layer(heat, dots).properties(
        title=alt.Title(label, subtitle=note), width=size, height=size
    )


# --- Sweeps -------------------------------------------------------------------------------------


def _x_encoding(data: pd.DataFrame, x: str) -> alt.X:
    """Numbers on a quantitative axis (log when they span two decades: lr), words in order."""
    if x == "depth":
        return alt.X("depth:Q", title="depth (hidden layers)", axis=alt.Axis(tickMinStep=1))
    values = pd.to_numeric(data[x], errors="coerce")
    if len(data) and values.notna().all():
        positive = values[values > 0]
        wide = len(positive) == len(values) and positive.max() >= 100 * positive.min()
        scale = alt.Scale(type="log") if wide else alt.Scale(zero=False)
        axis = alt.Axis(format=LOG_FORMAT) if wide else alt.Axis()
        return alt.X(f"{x}:Q", title=x, scale=scale, axis=axis)
    return alt.X(f"{x}:O", title=x)


def _sweep(
    summary: pd.DataFrame,
    field: str,
    title: str,
    y_title: str,
    rule: float,
    rule_label: str,
    y_scale: alt.Scale | None = None,
    x: str = "depth",
    color: str = "arch",
    colors: Colors | None = None,
) -> alt.LayerChart:
    """Median over seeds per (x, colour) with a min-max band and a dashed reference line."""
    y_scale = y_scale if y_scale is not None else alt.Scale(zero=False)
    cols = list(dict.fromkeys([color, x, "seed", field]))
    data, dropped = _finite(summary[cols], field, positive=False)
    data[color] = data[color].astype(str)  # legend keys are text (a scale matches strings)
    if colors is None:  # architectures keep their colours on every page
        fixed = ARCH_COLORS if color == "arch" else {}
        mapping = value_colors([str(v) for v in data[color]], fixed)
        colors = Colors(
            color,
            "architecture" if color == "arch" else color,
            tuple(mapping),
            tuple(mapping.values()),
        )
    scale = alt.Scale(domain=list(colors.domain), range=list(colors.range))
    base = alt.Chart(data).encode(x=_x_encoding(data, x))
    # The legend belongs to the lines, drawn in full colour: taken from the band it showed
    # the band's pale fill, which vanishes on the dark theme. The band colours its `fill`
    # channel (same colours) with no legend, resolved apart from the lines' `color`: a legend
    # switched off in one layer of a shared scale is switched off in every layer.
    band = base.mark_area(opacity=0.2).encode(
        y=alt.Y(f"min({field}):Q", title=y_title, scale=y_scale),
        y2=f"max({field}):Q",
        fill=alt.Fill(f"{color}:N", title=colors.title, scale=scale, legend=None),
    )
    line = base.mark_line(point=True).encode(
        color=alt.Color(f"{color}:N", title=colors.title, scale=scale, legend=_SWEEP_LEGEND),
        y=alt.Y(f"median({field}):Q", title=y_title, scale=y_scale),
        tooltip=[
            alt.Tooltip(f"{color}:N"),
            alt.Tooltip(f"{x}:N" if x != "depth" else "depth:Q"),
            alt.Tooltip(f"median({field}):Q", title="median", format=".2f"),
            alt.Tooltip(f"min({field}):Q", title="min", format=".2f"),
            alt.Tooltip(f"max({field}):Q", title="max", format=".2f"),
            alt.Tooltip("count():Q", title="seeds"),
        ],
    )
    ref = (
        alt.Chart(pd.DataFrame({"value": [rule], "meaning": [rule_label]}))
        .mark_rule(strokeDash=[4, 4], color="gray")
        .encode(
            y=alt.Y("value:Q", title=y_title),
            tooltip=["meaning:N", alt.Tooltip("value:Q", format=".2f")],
        )
    )
    subtitle = ["median over seeds, band = min to max; dashed line: " + rule_label]
    if dropped:
        subtitle.append(f"{dropped} run(s) with a non-finite value not drawn (e.g. zero gradient)")
    layers = alt.layer(band, line, ref).resolve_scale(fill="independent")
    return layers.resolve_legend(fill="independent").properties(
        title=alt.Title(title, subtitle=subtitle), width="container", height=HEIGHT
    )


def sweep_grad_ratio(
    summary: pd.DataFrame, x: str = "depth", color: str = "arch", colors: Colors | None = None
) -> alt.LayerChart:
    """log10(grad norm first layer / output layer) at epoch 1 against `x`, a line per `color`."""
    return _sweep(
        summary,
        "grad_ratio_log10",
        f"Gradient ratio vs {x}",
        "log10(first-layer / output-layer grad norm)",
        -math.log10(VANISH_FACTOR),
        f"vanishing ({VANISH_FACTOR:.0f}x smaller)",
        x=x,
        color=color,
        colors=colors,
    )


def sweep_accuracy(
    summary: pd.DataFrame, x: str = "depth", color: str = "arch", colors: Colors | None = None
) -> alt.LayerChart:
    """Final test accuracy against `x`, a line per `color`."""
    return _sweep(
        summary,
        "final_test_acc",
        f"Test accuracy vs {x}",
        "final test accuracy (fraction correct)",
        CHANCE_ACC,
        "chance",
        alt.Scale(domain=[0, 1]),
        x=x,
        color=color,
        colors=colors,
    )
