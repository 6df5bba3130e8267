"""Group seeds: runs whose configs differ only in seed (and name) become one line, the median
of its seeds with a min-max band. Pure (no Streamlit, no database).

`seed_groups` names the groups; `aggregate` turns a per-run frame (gradscope.db.frames.epochs,
layer_stats, histograms) into a per-group frame with the same columns, where `run_id` is the
group's id, `run_label` its label ("relu d10 · 5 seeds"), each measured field the median over the
group's runs and `<field>_lo` / `<field>_hi` its min and max (what gradscope.dashboard.charts draws
as a
band).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

IGNORED = ("seed", "name")  # what may differ within a group


@dataclass(frozen=True)
class SeedGroups:
    group_of: dict[str, str]  # run id -> group id
    labels: dict[str, str]  # group id -> label with its seed count
    members: dict[str, list[str]]  # group id -> run ids, in the order chosen


def _key(cfg: dict) -> str:
    rest = {k: v for k, v in cfg.items() if k not in IGNORED}
    return hashlib.sha1(json.dumps(rest, sort_keys=True, default=str).encode()).hexdigest()[:12]


def seed_groups(runs: pd.DataFrame) -> SeedGroups:
    """Groups of the chosen runs (id, config, arch, depth columns), in order of first member.

    A group is labelled by the config fields that tell the groups apart (or by architecture and
    depth when there is one group), with how many seeds it holds."""
    group_of: dict[str, str] = {}
    members: dict[str, list[str]] = {}
    first_cfg: dict[str, dict] = {}
    for run_id, cfg in zip(runs["id"], runs["config"], strict=True):
        key = f"group:{_key(cfg)}"
        group_of[run_id] = key
        members.setdefault(key, []).append(run_id)
        first_cfg.setdefault(key, {k: v for k, v in cfg.items() if k not in IGNORED})
    fields = list(dict.fromkeys(k for cfg in first_cfg.values() for k in cfg))
    differing = [f for f in fields if len({json.dumps(c.get(f)) for c in first_cfg.values()}) > 1]
    labels = {}
    for key, cfg in first_cfg.items():
        shown = differing or ["arch", "depth"]
        text = ", ".join(f"{f}={cfg.get(f)}" for f in shown)
        n = len(members[key])
        labels[key] = f"{text} · {n} seed{'s' if n != 1 else ''}"
    return SeedGroups(group_of, labels, members)


def aggregate(
    frame: pd.DataFrame, groups: SeedGroups, keys: Sequence[str], fields: Sequence[str]
) -> pd.DataFrame:
    """Per group and `keys` (e.g. epoch, or epoch and layer): the median of each field over the
    group's runs, with `<field>_lo`/`<field>_hi` = min/max, and `seeds` = how many runs had a
    row there. NaN values are skipped (a diverged seed does not blank its group's line).

    Rows come out in order of first appearance, like `groupby(sort=False)`, with the same
    columns and types as a pandas groupby's median, min and max joined. Computed in numpy
    on integer codes, all fields at once: the rows of each output row ("line") are put side by
    side in a (line, field, seed) cube and sorted along the seeds. A pandas groupby on the
    string run ids, with its three reductions and two joins, costs about 3x as much."""
    extra = [c for c in ("colour",) if c in frame]
    n_rows = len(frame)
    # Each row's group, through the few distinct run ids (not a dict lookup per row).
    run_codes, run_ids = pd.factorize(frame["run_id"], use_na_sentinel=False)
    group_codes, group_ids = pd.factorize(
        np.array([groups.group_of.get(r) for r in run_ids], dtype=object), use_na_sentinel=False
    )
    line = group_codes[run_codes].astype(np.int64)
    for col in (*extra, *keys):  # one int per distinct (group, colour, keys...), mixed radix
        codes, uniques = pd.factorize(frame[col].to_numpy(), use_na_sentinel=False)
        line = line * max(len(uniques), 1) + codes
    # Renumbered in order of first appearance; a line's first row is where the running
    # maximum of those numbers goes up.
    line, _ = pd.factorize(line)
    first_row = np.flatnonzero(np.diff(np.maximum.accumulate(line), prepend=-1) > 0)
    n_lines = len(first_row)
    # Row r is seed number `slot[r]` of its line (its rank among the line's rows).
    order = np.argsort(line, kind="stable")
    sizes = np.bincount(line, minlength=n_lines)
    starts = np.cumsum(sizes) - sizes
    slot = np.empty(n_rows, dtype=np.int64)
    slot[order] = np.arange(n_rows) - starts[line[order]]
    cube = np.full((n_lines, len(fields), max(int(sizes.max(initial=0)), 1)), np.nan)
    columns = [frame[f] for f in fields]
    for i, column in enumerate(columns):
        cube[line, i, slot] = column.to_numpy(dtype=np.float64, na_value=np.nan)
    cube.sort(axis=2)  # NaN sorts last: each (line, field)'s values come first, in order
    counts = (~np.isnan(cube)).sum(axis=2)

    def nth(index: np.ndarray) -> np.ndarray:  # (field, line): the index-th sorted value
        return np.take_along_axis(cube, np.maximum(index, 0)[..., None], 2)[..., 0].T

    median = (nth((counts - 1) // 2) + nth(counts // 2)) / 2  # NaN where a line has no value
    low, high = cube[..., 0].T, nth(counts - 1)  # NaN where counts is 0 (NaN sorts last)
    labels = np.array([groups.labels.get(g) for g in group_ids], dtype=object)
    group_of_line = group_codes[run_codes[first_row]]
    out: dict[str, object] = {
        "run_id": pd.array(np.asarray(group_ids, dtype=object)[group_of_line], dtype="str"),
        "run_label": pd.array(labels[group_of_line], dtype="str"),
    }
    out.update({col: frame[col].to_numpy()[first_row] for col in (*extra, *keys)})
    out.update({f: median[i] for i, f in enumerate(fields)})
    for suffix, stat in (("_lo", low), ("_hi", high)):
        for i, (f, column) in enumerate(zip(fields, columns, strict=True)):
            # Like pandas: the min and max of an integer column stay integers.
            ints = column.dtype.kind in "iu"  # (no NaN in them: every line has a value)
            out[f + suffix] = stat[i].astype(column.dtype) if ints else stat[i]
    out["seeds"] = sizes.astype(np.int64)
    return pd.DataFrame(out)
