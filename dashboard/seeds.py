"""Group seeds: runs whose configs differ only in seed (and name) become one line, the median
of its seeds with a min-max band. Pure (no Streamlit, no database).

`seed_groups` names the groups; `aggregate` turns a per-run frame (db.frames.epochs,
layer_stats, histograms) into a per-group frame with the same columns, where `run_id` is the
group's id, `run_label` its label ("relu d10 · 5 seeds"), each measured field the median over the
group's runs and `<field>_lo` / `<field>_hi` its min and max (what dashboard.charts draws as a
band).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

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
    row there. NaN values are skipped (a diverged seed does not blank its group's line)."""
    data = frame.assign(run_id=frame["run_id"].map(groups.group_of))
    extra = [c for c in ("colour",) if c in data]
    grouped = data.groupby(["run_id", *extra, *keys], sort=False, dropna=False)[list(fields)]
    median, lo, hi = grouped.median(), grouped.min(), grouped.max()
    out = median.join(lo.add_suffix("_lo")).join(hi.add_suffix("_hi"))
    out["seeds"] = grouped.size()
    out = out.reset_index()
    out.insert(1, "run_label", out["run_id"].map(groups.labels))
    return out
