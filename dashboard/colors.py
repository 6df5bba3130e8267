"""Colours that belong to runs, not to a chart. Pure (no Streamlit, no database).

The rule: no two lines in one view share a colour, and a run keeps its colour from view to view
as far as that allows. A run's own colour is PALETTE[n % len(PALETTE)] where n is its creation
number (`runs.seq`; runs older than schema 0002 use a hash of their id), so runs created
together (a sweep, the classic comparison) differ up to len(PALETTE) runs. Runs 24 apart share
an own colour: when both are in a view, the earlier-created run keeps it and the later one moves
to the next colour free in that view (`distinct_colors`). Seed groups are coloured the same way,
each by its first run. Past the palette colours must repeat: `Colors.repeats` counts the lines
that share one, and `Colors.note()` says so and suggests colouring by a field.
The palette is mid-lightness, readable on white and on Streamlit's dark background;
consecutive entries are far apart in hue (steps of 105 degrees).
"""

from __future__ import annotations

import colorsys
import json
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

PALETTE_SIZE = 24


def _luminance(rgb: tuple[float, float, float]) -> float:
    """WCAG relative luminance of an sRGB colour (components 0..1)."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
    return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]


def _palette(n: int = PALETTE_SIZE) -> tuple[str, ...]:
    """n hues, each at the lightness that gives it a set luminance (0.20 or 0.32, alternating):
    blue at the same HSL lightness as yellow would vanish on a dark background. Both levels
    keep a contrast of about 3:1 or more against white and against Streamlit's dark theme."""
    out = []
    for k in range(n):
        hue = ((k * 7) % n) / n  # 7 is coprime with 24: every hue once, neighbours 105° apart
        target = 0.20 if k % 2 == 0 else 0.32
        lo, hi = 0.0, 1.0
        for _ in range(30):  # bisect the HLS lightness for the target luminance
            mid = (lo + hi) / 2
            if _luminance(colorsys.hls_to_rgb(hue, mid, 0.70)) < target:
                lo = mid
            else:
                hi = mid
        r, g, b = colorsys.hls_to_rgb(hue, lo, 0.70)
        out.append(f"#{round(r * 255):02x}{round(g * 255):02x}{round(b * 255):02x}")
    return tuple(out)


PALETTE = _palette()
# The same on every page (Compare, Sweeps, the sidebar): red fails, blue and green learn.
ARCH_COLORS = {"sigmoid": "#e8575a", "relu": "#4e8fd4", "resnet": "#3fa34d"}
GROUP_FIELDS = ("run", "architecture")  # colour-by choices besides the config fields


def _own_index(run_id: str, seq: object = None) -> int:
    known = seq is not None and not pd.isna(seq)
    n = int(seq) if known else zlib.crc32(run_id.encode())  # type: ignore[call-overload]
    return n % PALETTE_SIZE


def run_color(run_id: str, seq: object = None) -> str:
    """The run's own colour (see the module docstring): what it gets in any view where no
    earlier-created run holds the same one."""
    return PALETTE[_own_index(run_id, seq)]


def distinct_colors(own: Mapping[str, int]) -> dict[str, str]:
    """A colour per key, `own` giving each key's own palette index, keys in priority order
    (earliest created first). Each key gets its own colour unless a key before it took it, and
    then the next colour in palette order that no key has taken; past the palette, its own
    colour again (colours must repeat then)."""
    taken: set[int] = set()
    out: dict[str, str] = {}
    for key, index in own.items():
        if len(taken) < PALETTE_SIZE:
            while index in taken:
                index = (index + 1) % PALETTE_SIZE
        taken.add(index)
        out[key] = PALETTE[index]
    return out


def creation_order(runs: pd.DataFrame) -> list[int]:
    """Row positions of `runs` oldest first: by creation number (`seq`), runs without one
    (older than schema 0002) by creation time, after those with one; the id breaks ties."""
    none = [None] * len(runs)
    seqs = list(runs["seq"]) if "seq" in runs else none
    stamps = list(runs["created_at"]) if "created_at" in runs else none

    def key(pos: int) -> tuple:
        seq, stamp = seqs[pos], stamps[pos]
        no_seq = seq is None or pd.isna(seq)
        when = "" if stamp is None or pd.isna(stamp) else pd.Timestamp(stamp).isoformat()
        return (no_seq, 0 if no_seq else int(seq), when, str(runs["id"].iloc[pos]))

    return sorted(range(len(runs)), key=key)


def value_colors(values: Iterable[str], fixed: Mapping[str, str] | None = None) -> dict[str, str]:
    """Colours for the distinct values of a field, in sorted order (so the same values get
    the same colours on every page); `fixed` values keep their own."""
    fixed = fixed or {}
    out: dict[str, str] = {}
    free = iter(c for c in PALETTE if c not in fixed.values())
    for value in sorted(set(values), key=_sort_key):
        out[value] = fixed.get(value) or next(free, PALETTE[len(out) % PALETTE_SIZE])
    return out


def _sort_key(value: str) -> tuple:
    try:
        return (0, float(value), value)
    except ValueError:
        return (1, 0.0, value)


@dataclass(frozen=True)
class Colors:
    """How a chart colours its marks: the data column holding the key, the legend title, and
    the key -> colour mapping. `legend=False` when the page shows one shared legend instead."""

    field: str = "run_label"
    title: str = "run"
    domain: tuple[str, ...] = ()
    range: tuple[str, ...] = ()
    legend: bool = True

    def mapping(self) -> dict[str, str]:
        return dict(zip(self.domain, self.range, strict=True))

    @property
    def repeats(self) -> int:
        """How many keys (lines, or values of the colour field) share a colour with another."""
        counts: dict[str, int] = {}
        for colour in self.range:
            counts[colour] = counts.get(colour, 0) + 1
        return sum(n for n in counts.values() if n > 1)

    def only(self, keys: Iterable[str]) -> Colors:
        """The same colours, for the keys a view draws (legend in domain order)."""
        used = set(keys)
        pairs = [(k, c) for k, c in zip(self.domain, self.range, strict=True) if k in used]
        return Colors(
            self.field,
            self.title,
            tuple(k for k, _ in pairs),
            tuple(c for _, c in pairs),
            self.legend,
        )

    def note(self, suggest: str | None = None) -> str | None:
        """What to tell people when colours repeat (past the palette), or None."""
        if not self.repeats:
            return None
        what = "lines" if self.title in ("run", "seed group") else f"values of {self.title}"
        text = (
            f"{len(self.domain)} {what} but only {PALETTE_SIZE} colours: {self.repeats} of "
            "them share a colour with another"
        )
        if suggest and suggest != self.title:
            return f"{text}. Colour by {suggest} to tell them apart."
        return f"{text}; hover a line to see which it is."


def field_value(cfg: Mapping[str, object], field: str) -> str:
    """A config field's value as a legend key ("" when the run lacks it)."""
    value = cfg.get(field)
    return "" if value is None else str(value)


def _run_colours(runs: pd.DataFrame) -> dict[str, str]:
    """Run id -> colour, distinct within `runs` (see `distinct_colors`)."""
    ids = list(runs["id"])
    seqs = list(runs["seq"]) if "seq" in runs else [None] * len(ids)
    return distinct_colors({ids[p]: _own_index(ids[p], seqs[p]) for p in creation_order(runs)})


def colors_for(runs: pd.DataFrame, by: str, *, legend: bool = False) -> tuple[Colors, dict]:
    """Colours of the chosen runs (db_gateway.Selection.runs: id, run_label, arch, seq, config)
    coloured `by` "run", "architecture" or a config field; returns the Colors and, per run id,
    its key (the value of the `colour` column the page adds to the chart data). By run, no two
    runs share a colour up to len(PALETTE) runs (the legend lists them in the order given)."""
    if by == "run":
        keys = dict(zip(runs["id"], runs["run_label"], strict=True))
        colour = _run_colours(runs)
        mapping = {keys[run_id]: colour[run_id] for run_id in runs["id"]}
        return Colors("colour", "run", tuple(mapping), tuple(mapping.values()), legend), keys
    if by == "architecture":
        keys = dict(zip(runs["id"], runs["arch"].astype(str), strict=True))
        mapping = value_colors(keys.values(), ARCH_COLORS)
        return Colors(
            "colour", "architecture", tuple(mapping), tuple(mapping.values()), legend
        ), keys
    keys = {
        run_id: field_value(cfg, by) for run_id, cfg in zip(runs["id"], runs["config"], strict=True)
    }
    mapping = value_colors(keys.values())
    return Colors("colour", by, tuple(mapping), tuple(mapping.values()), legend), keys


def group_colors(
    runs: pd.DataFrame, members: Mapping[str, Sequence[str]], labels: Mapping[str, str]
) -> tuple[Colors, dict[str, str]]:
    """Colours of seed groups coloured by run: each group its first run's own colour, no two
    groups alike (a group whose first run was created later moves, as runs do). `members`:
    group id -> run ids (first run first); `labels`: group id -> label. Returns the Colors
    (keyed by label) and, per group id, its key."""
    ids = list(runs["id"])
    seqs = list(runs["seq"]) if "seq" in runs else [None] * len(ids)
    rank = {pos: r for r, pos in enumerate(creation_order(runs))}
    first = {g: ids.index(run_ids[0]) for g, run_ids in members.items()}
    by_age = sorted(first, key=lambda g: rank[first[g]])
    colour = distinct_colors({g: _own_index(ids[first[g]], seqs[first[g]]) for g in by_age})
    keys = {g: labels[g] for g in members}
    mapping = {labels[g]: colour[g] for g in members}
    return Colors("colour", "seed group", tuple(mapping), tuple(mapping.values()), False), keys


# Never a colour key: they are identity or the thing grouped over.
_NOT_KEYS = ("name", "seed")


def varying_field(configs: Iterable[Mapping[str, object]]) -> str | None:
    """The setting to colour many runs by: "architecture" when the runs differ in it (its
    colours are fixed on every page, and it is what the classic sweeps compare), else the
    setting with the most distinct values that the palette can still tell apart (else the
    one with the fewest), seed and name never; None when the runs share every setting."""
    values: dict[str, set[str]] = {}
    nested: set[str] = set()  # a custom run's settings and model summary: not one value
    for cfg in configs:
        for field, value in cfg.items():
            if isinstance(value, dict | list):
                nested.add(field)
            values.setdefault(field, set()).add(json.dumps(value, sort_keys=True, default=str))
    for field in nested:
        values.pop(field)
    counts = {f: len(v) for f, v in values.items() if f not in _NOT_KEYS and len(v) > 1}
    if "arch" in counts:
        return "architecture"
    if not counts:
        return None
    fitting = [f for f in counts if counts[f] <= PALETTE_SIZE]
    if fitting:
        return max(fitting, key=lambda f: counts[f])
    return min(counts, key=lambda f: counts[f])
