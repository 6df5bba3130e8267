"""gradscope.dashboard.seeds.aggregate against pandas' own groupby (median, min, max, size): the
same
frame, row for row, on awkward data (NaN values, a seed missing an epoch, rows out of order,
an integer column, a colour column, no rows)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from gradscope.dashboard import seeds


def runs_frame() -> pd.DataFrame:
    configs = [{"arch": "relu", "depth": 3, "seed": s} for s in range(4)]
    configs += [{"arch": "sigmoid", "depth": 3, "seed": s} for s in range(2)]
    return pd.DataFrame({"id": [f"r{i}" for i in range(len(configs))], "config": configs})


def per_run(rng: np.random.Generator) -> pd.DataFrame:
    rows = [
        {"run_id": f"r{i}", "epoch": e, "layer": la, "a": rng.random(), "count": rng.integers(9)}
        for i in range(6)
        for e in (1, 2, 3)
        for la in (0, 1)
        if not (i == 1 and e == 3)  # one seed stopped early
    ]
    frame = pd.DataFrame(rows)
    frame["run_label"] = frame["run_id"] + " label"
    frame.loc[rng.random(len(frame)) < 0.25, "a"] = np.nan
    frame.loc[frame["run_id"] == "r4", "a"] = np.nan  # a whole seed without this statistic
    return frame.sample(frac=1, random_state=3).reset_index(drop=True)


def reference(frame: pd.DataFrame, groups: seeds.SeedGroups, keys, fields) -> pd.DataFrame:
    """The plain pandas computation aggregate() must match."""
    data = frame.assign(run_id=frame["run_id"].map(groups.group_of))
    extra = [c for c in ("colour",) if c in data]
    grouped = data.groupby(["run_id", *extra, *keys], sort=False, dropna=False)[list(fields)]
    out = grouped.median().join(grouped.min().add_suffix("_lo"))
    out = out.join(grouped.max().add_suffix("_hi"))
    out["seeds"] = grouped.size()
    out = out.reset_index()
    out.insert(1, "run_label", out["run_id"].map(groups.labels).astype("str"))
    out["run_id"] = out["run_id"].astype("str")
    return out


def test_aggregate_equals_pandas_groupby_median_min_max() -> None:
    groups = seeds.seed_groups(runs_frame())
    frame = per_run(np.random.default_rng(0))
    for data, keys in (
        (frame, ("epoch", "layer")),
        (frame.assign(colour=np.where(frame["run_id"] < "r2", "x", "y")), ("epoch", "layer")),
        (frame.iloc[:0], ("epoch", "layer")),
    ):
        got = seeds.aggregate(data, groups, keys, ("a", "count"))
        pd.testing.assert_frame_equal(got, reference(data, groups, keys, ("a", "count")))
    got = seeds.aggregate(frame, groups, ("epoch", "layer"), ("a", "count"))
    relu_e3 = got[(got["run_label"].str.contains("4 seeds")) & (got["epoch"] == 3)]
    assert set(relu_e3["seeds"]) == {3}  # the seed that stopped early is not counted there
