"""Chart specs built from small synthetic frames: marks, encodings, scales and the data rows."""

from __future__ import annotations

import json
import math
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import pytest

from gradscope.analysis.diagnosis import CHANCE_ACC, COLLAPSE_PRED_STD, VANISH_FACTOR
from gradscope.dashboard import charts

NAN = float("nan")
RUNS = {"a": "sigmoid d4 s0 · aaaa", "b": "relu d4 s0 · bbbb"}


def spec_of(chart: alt.TopLevelMixin) -> dict[str, Any]:
    spec = chart.to_dict()
    json.dumps(spec, allow_nan=False)  # NaN/inf must never reach the JSON handed to Vega
    return spec


def rows(spec: dict[str, Any], view: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The inline data rows of `view` (a layer or concat member), else of the top-level spec."""
    data = (view or {}).get("data") or spec["data"]
    return spec["datasets"][data["name"]]


def mark(view: dict[str, Any]) -> str:
    return view["mark"]["type"] if isinstance(view["mark"], dict) else view["mark"]


def epochs_frame() -> pd.DataFrame:
    out = []
    for run_id, label in RUNS.items():
        for epoch in range(1, 5):
            out.append(
                {
                    "run_id": run_id,
                    "run_label": label,
                    "epoch": epoch,
                    "train_loss": 0.7 / epoch,
                    "train_acc": 0.5 + epoch / 10,
                    "test_loss": 0.8 / epoch,
                    "test_acc": 0.45 + epoch / 10,
                    "pred_std": 10.0**-epoch,
                    "seconds": 0.1,
                }
            )
    return pd.DataFrame(out)


def layers_frame(epochs: int = 3, n_layers: int = 4) -> pd.DataFrame:
    out = []
    for k, (run_id, label) in enumerate(RUNS.items()):
        for epoch in range(1, epochs + 1):
            for layer in range(n_layers):
                out.append(
                    {
                        "run_id": run_id,
                        "run_label": label,
                        "epoch": epoch,
                        "layer": layer,
                        "grad_norm": 10.0 ** (layer - n_layers - k) / epoch,
                        "grad_mean_abs": 1e-3,
                        "grad_std": 1e-3,
                        "grad_max_abs": 1e-2,
                        "weight_norm": 1.0,
                        "update_ratio": 1e-3,
                        "act_mean": 0.5,
                        "act_std": 0.1 / 7**layer,
                        "saturated_frac": 0.01 * layer if run_id == "a" else NAN,
                        "dead_frac": NAN if run_id == "a" else 0.2,
                    }
                )
    return pd.DataFrame(out)


# --- Learning curves and prediction spread ----------------------------------------------------


def test_loss_curves_encodings_and_rows() -> None:
    epochs = epochs_frame()
    spec = spec_of(charts.loss_curves(epochs))
    line, dots = spec["layer"]
    assert mark(line) == "line" and mark(dots) == "point" and spec["width"] == "container"
    enc = line["encoding"]
    # The dash legend shows strokes (dashed), not dots that all look alike.
    assert enc["strokeDash"]["legend"]["symbolType"] == "stroke"
    assert "strokeDash" not in dots["encoding"]
    assert enc["x"]["field"] == "epoch" and enc["color"]["field"] == "run_label"
    assert enc["strokeDash"]["field"] == "split"
    got = {(r["run_id"], r["epoch"], r["split"]): r["value"] for r in rows(spec)}
    assert len(got) == 2 * len(epochs)
    for r in epochs.itertuples():
        assert got[(r.run_id, r.epoch, "train")] == r.train_loss
        assert got[(r.run_id, r.epoch, "test")] == r.test_loss


def test_curves_drop_non_finite_values_and_say_so() -> None:
    epochs = epochs_frame()
    epochs.loc[0, "test_loss"] = math.inf
    epochs.loc[1, "train_loss"] = NAN
    spec = spec_of(charts.loss_curves(epochs))
    assert len(rows(spec)) == 2 * len(epochs) - 2
    assert all(r["value"] is not None for r in rows(spec))
    assert "2 non-finite" in spec["title"]["subtitle"]


def test_accuracy_axis_is_fixed_and_learning_curves_pair() -> None:
    spec = spec_of(charts.accuracy_curves(epochs_frame()))
    assert spec["layer"][0]["encoding"]["y"]["scale"]["domain"] == [0, 1]
    assert {r["split"] for r in rows(spec)} == {"train", "test"}
    pair = spec_of(charts.learning_curves(epochs_frame()))
    assert len(pair["hconcat"]) == 2
    assert all(isinstance(view["width"], int) for view in pair["hconcat"])


def test_prediction_spread_log_scale_with_threshold_rule() -> None:
    spec = spec_of(charts.prediction_spread(epochs_frame()))
    line, rule, *_floor = spec["layer"]
    assert mark(line) == "line" and mark(rule) == "rule"
    assert line["encoding"]["y"]["scale"]["type"] == "log"
    assert [r["threshold"] for r in rows(spec, rule)] == [COLLAPSE_PRED_STD]
    values = [r["pred_std"] for r in rows(spec, line)]
    assert values == list(epochs_frame()["pred_std"])
    assert spec["title"]["subtitle"][-1] == "log scale"  # nothing at the floor, none mentioned


@pytest.mark.parametrize("bad", [0.0, NAN, math.inf, -1e-3])
def test_prediction_spread_draws_collapsed_and_diverged_runs_at_a_marked_floor(
    bad: float,
) -> None:
    """A collapsed run's spread is exactly 0 at every epoch: it is the line this chart exists
    to show, so it is drawn at a floor below every real value, marked, never dropped."""
    epochs = epochs_frame()
    collapsed = epochs["run_id"] == "a"
    epochs.loc[collapsed, "pred_std"] = bad
    spec = spec_of(charts.prediction_spread(epochs))
    line = spec["layer"][0]
    drawn = {(r["run_id"], r["epoch"]): r for r in rows(spec, line)}
    assert len(drawn) == len(epochs)  # every point, the collapsed run's included
    floor = charts.spread_floor(epochs["pred_std"])
    assert floor < COLLAPSE_PRED_STD and floor < epochs.loc[~collapsed, "pred_std"].min()
    assert all(drawn[("a", e)]["pred_std"] == floor for e in range(1, 5))
    assert all(drawn[("b", e)]["pred_std"] == 10.0**-e for e in range(1, 5))
    # The floor is marked: a rule at it, and the floored points in a shape of their own.
    rules = [v for v in spec["layer"] if mark(v) == "rule" and "floor" in json.dumps(v)]
    assert [r["floor"] for r in rows(spec, rules[0])] == [floor]
    (marked,) = [v for v in spec["layer"] if v.get("mark", {}).get("shape") == charts.FLOOR_SHAPE]
    assert {r["run_id"] for r in rows(spec, marked)} == {"a"}
    assert len(rows(spec, marked)) == 4
    assert "4 value(s) exactly 0" in spec["title"]["subtitle"][-1]
    # The tooltip tells the recorded value, not the floor it is drawn at.
    assert drawn[("a", 1)]["recorded"] != f"{floor:.2e}"


def test_prediction_spread_floors_grouped_bands_too() -> None:
    epochs = epochs_frame()
    epochs["pred_std_lo"] = 0.0  # one seed collapsed in every group
    epochs["pred_std_hi"] = epochs["pred_std"] * 2
    spec = spec_of(charts.prediction_spread(epochs))
    banded = spec["layer"][0]  # the band and the line share the line's data
    assert any(mark(v) == "area" for v in banded["layer"])
    floor = charts.spread_floor(epochs["pred_std"])
    assert all(r["pred_std_lo"] == floor for r in rows(spec, banded))


# --- Gradient flow, heatmap, histograms -------------------------------------------------------


def test_gradient_flow_is_log_scale_at_one_epoch() -> None:
    layers = layers_frame()
    spec = spec_of(charts.gradient_flow(layers, epoch=2))
    assert mark(spec) == "line"
    assert spec["encoding"]["x"]["field"] == "layer"
    assert spec["encoding"]["y"]["field"] == "grad_norm"
    assert spec["encoding"]["y"]["scale"]["type"] == "log"
    expected = layers[layers["epoch"] == 2]
    got = {(r["run_id"], r["layer"]): r["grad_norm"] for r in rows(spec)}
    assert got == {(r.run_id, r.layer): r.grad_norm for r in expected.itertuples()}
    assert "epoch 2" in spec["title"]["subtitle"]


def test_gradient_flow_drops_zero_and_non_finite() -> None:
    layers = layers_frame()
    first = layers.index[layers["epoch"] == 1]
    layers.loc[first[:3], "grad_norm"] = [0.0, math.inf, NAN]  # underflow, overflow, diverged
    spec = spec_of(charts.gradient_flow(layers, epoch=1))
    values = [r["grad_norm"] for r in rows(spec)]
    assert len(values) == len(first) - 3
    assert all(v is not None and 0 < v < math.inf for v in values)
    assert "3 zero or non-finite" in spec["title"]["subtitle"]


def test_gradient_flow_last_epoch_of_each_run() -> None:
    layers = layers_frame(epochs=3)
    layers = layers[~((layers["run_id"] == "b") & (layers["epoch"] == 3))]  # b stopped early
    spec = spec_of(charts.gradient_flow(layers, epoch=None))
    assert {(r["run_id"], r["epoch"]) for r in rows(spec)} == {("a", 3), ("b", 2)}


def test_shared_domain_spans_all_runs_in_whole_decades() -> None:
    layers = layers_frame()
    layers.loc[0, "grad_norm"] = 3e-9
    layers.loc[1, "grad_norm"] = 250.0
    layers.loc[2:4, "grad_norm"] = [0.0, math.inf, NAN]  # ignored
    assert charts.shared_log10_domain(layers) == (-9.0, 3.0)
    empty = layers.assign(grad_norm=0.0)
    lo, hi = charts.shared_log10_domain(empty)
    assert lo < hi


def test_heatmaps_of_two_runs_share_the_passed_domain() -> None:
    layers = layers_frame()
    domain = charts.shared_log10_domain(layers)
    specs = [
        spec_of(charts.grad_heatmap(layers[layers["run_id"] == run_id], domain)) for run_id in RUNS
    ]
    for spec, run_id in zip(specs, RUNS, strict=True):
        assert mark(spec) == "rect"
        enc = spec["encoding"]
        assert (enc["x"]["field"], enc["x"]["type"]) == ("epoch", "ordinal")
        assert (enc["y"]["field"], enc["y"]["type"]) == ("layer", "ordinal")
        assert enc["color"]["scale"]["domain"] == list(domain)
        assert RUNS[run_id] in spec["title"]["text"]
        for r in rows(spec):
            assert r["log10_grad_norm"] == pytest.approx(math.log10(r["grad_norm"]))
    assert specs[0]["encoding"]["color"]["scale"] == specs[1]["encoding"]["color"]["scale"]


def test_heatmap_blanks_bad_cells_and_refuses_several_runs() -> None:
    layers = layers_frame()
    one = layers[layers["run_id"] == "a"].copy()
    one.iloc[0, one.columns.get_loc("grad_norm")] = 0.0
    spec = spec_of(charts.grad_heatmap(one, (-8.0, 0.0)))
    assert len(rows(spec)) == len(one) - 1
    assert "1 cell" in spec["title"]["subtitle"]
    with pytest.raises(ValueError):
        charts.grad_heatmap(layers, (-8.0, 0.0))


def test_histograms_overlay_runs_with_bin_edges() -> None:
    edges = np.linspace(-12, 2, 57)
    frames = []
    for run_id, label in RUNS.items():
        counts = np.arange(56) + (5 if run_id == "a" else 0)
        frames.append(
            pd.DataFrame(
                {
                    "run_id": run_id,
                    "run_label": label,
                    "bin_left": edges[:-1],
                    "bin_right": edges[1:],
                    "count": counts,
                    "fraction": counts / counts.sum(),
                }
            )
        )
    hist = pd.concat(frames, ignore_index=True)
    spec = spec_of(charts.grad_histograms(hist))
    assert mark(spec) == "bar"
    enc = spec["encoding"]
    assert enc["x"]["field"] == "bin_left" and enc["x2"]["field"] == "bin_right"
    assert enc["y"]["field"] == "fraction" and enc["y"]["stack"] is None  # overlaid, not stacked
    assert enc["color"]["field"] == "run_label"
    assert pd.DataFrame(rows(spec)).equals(hist)


# --- Activation health --------------------------------------------------------------------------


def test_activation_spread_is_log_and_drops_zero() -> None:
    layers = layers_frame()
    last = layers.index[layers["epoch"] == 3]
    layers.loc[last[0], "act_std"] = 0.0
    spec = spec_of(charts.activation_spread(layers))
    assert spec["encoding"]["y"]["scale"]["type"] == "log"
    assert len(rows(spec)) == len(last) - 1
    assert all(r["act_std"] > 0 and r["epoch"] == 3 for r in rows(spec))


def test_unit_health_skips_nan_fractions() -> None:
    layers = layers_frame()
    spec = spec_of(charts.unit_health(layers, epoch=1))
    assert spec["layer"][0]["encoding"]["y"]["scale"]["domain"] == [0, 1]
    got = {(r["run_id"], r["measure"]) for r in rows(spec)}
    # run a is sigmoid (dead_frac NaN), run b is ReLU (saturated_frac NaN)
    assert got == {("a", "saturated"), ("b", "dead")}
    assert all(r["fraction"] is not None for r in rows(spec))
    both = spec_of(charts.activation_health(layers))
    assert len(both["hconcat"]) == 2


# --- Decision map -------------------------------------------------------------------------------


def test_decision_map_heatmap_and_points() -> None:
    xs = np.linspace(-2.0, 2.0, 48)
    gx, gy = np.meshgrid(xs, xs)
    prob = 1 / (1 + np.exp(-gx.ravel()))
    prob[0] = NAN
    grid = pd.DataFrame(
        {"run_id": "a", "run_label": RUNS["a"], "x": gx.ravel(), "y": gy.ravel(), "prob": prob}
    )
    rng = np.random.default_rng(0)
    points = pd.DataFrame(
        {
            "run_id": "a",
            "run_label": RUNS["a"],
            "x": rng.normal(size=30),
            "y": rng.normal(size=30),
            "label": rng.integers(0, 2, size=30),
        }
    )
    spec = spec_of(charts.decision_map(grid, points))
    heat, dots = spec["layer"]
    assert mark(heat) == "rect" and mark(dots) == "point"
    scale = heat["encoding"]["color"]["scale"]
    assert scale["domain"] == [0, 1] and scale["domainMid"] == 0.5
    cells = rows(spec, heat)
    assert len(cells) == 48 * 48 - 1
    step = xs[1] - xs[0]
    for r in cells[:50]:
        assert r["x1"] - r["x0"] == pytest.approx(step)
        assert r["x0"] < r["x"] < r["x1"] and r["y0"] < r["y"] < r["y1"]
    assert pd.DataFrame(rows(spec, dots)).equals(points[["x", "y", "label"]])
    assert "1 cell" in spec["title"]["subtitle"]


# --- Sweeps -------------------------------------------------------------------------------------


def sweep_frame() -> pd.DataFrame:
    out = []
    for arch, slope in (("sigmoid", -0.8), ("relu", -0.3), ("resnet", -0.05)):
        for depth in (2, 5, 10):
            for seed in range(3):
                out.append(
                    {
                        "arch": arch,
                        "depth": depth,
                        "seed": seed,
                        "grad_ratio_log10": slope * depth + 0.1 * seed,
                        "final_test_acc": 0.5 if arch == "sigmoid" and depth == 10 else 0.95,
                    }
                )
    return pd.DataFrame(out)


def test_sweep_grad_ratio_median_line_band_and_vanishing_rule() -> None:
    summary = sweep_frame()
    summary.loc[0, "grad_ratio_log10"] = -math.inf  # layer-0 gradient underflowed to 0
    spec = spec_of(charts.sweep_grad_ratio(summary))
    band, line, rule = spec["layer"]
    assert mark(band) == "area" and mark(line) == "line" and mark(rule) == "rule"
    assert line["encoding"]["y"]["aggregate"] == "median"
    assert band["encoding"]["y"]["aggregate"] == "min"
    assert band["encoding"]["y2"]["aggregate"] == "max"
    assert line["encoding"]["color"]["field"] == "arch"
    assert line["encoding"]["x"]["field"] == "depth"
    assert rows(spec, rule)[0]["value"] == pytest.approx(-math.log10(VANISH_FACTOR))
    data = rows(spec, line)
    assert len(data) == len(summary) - 1
    assert all(math.isfinite(r["grad_ratio_log10"]) for r in data)
    assert "1 run" in " ".join(spec["title"]["subtitle"])


def test_sweep_accuracy_keeps_all_seeds_and_chance_rule() -> None:
    summary = sweep_frame()
    spec = spec_of(charts.sweep_accuracy(summary))
    band, line, rule = spec["layer"]
    assert line["encoding"]["y"]["scale"]["domain"] == [0, 1]
    assert rows(spec, rule)[0]["value"] == CHANCE_ACC
    assert pd.DataFrame(rows(spec, line)).equals(
        summary[["arch", "depth", "seed", "final_test_acc"]]
    )


@pytest.mark.parametrize("build", [charts.sweep_grad_ratio, charts.sweep_accuracy])
def test_sweep_legend_symbols_are_the_lines_not_the_pale_band(build) -> None:  # noqa: ANN001
    """The legend is drawn from the line layer, opaque: the band's fill (opacity 0.2) made
    its symbols invisible on the dark theme."""
    spec = spec_of(build(sweep_frame()))
    band, line, _rule = spec["layer"]
    # The band's colour has no legend of its own, and no `color` that could share (and so
    # disable or restyle) the lines' legend.
    assert "color" not in band["encoding"] and band["encoding"]["fill"]["legend"] is None
    legend = line["encoding"]["color"]["legend"]
    assert legend["symbolOpacity"] == 1 and legend["symbolType"] == "stroke"
    assert line["encoding"]["color"]["scale"] == band["encoding"]["fill"]["scale"]
    # Vega-Lite switches a shared legend off in every layer when one layer turns it off: the
    # band's fill is resolved apart, so the lines keep theirs.
    assert spec["resolve"]["legend"]["fill"] == "independent"
    assert spec["resolve"]["scale"]["fill"] == "independent"
