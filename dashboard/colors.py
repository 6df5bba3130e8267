"""Colours that belong to runs, not to a chart: a run keeps its colour on every chart, page and
comparison. Pure (no Streamlit, no database).

A run's colour is PALETTE[n % len(PALETTE)] where n is its creation number (`runs.seq`), so runs
created together (a sweep, the classic comparison) get different colours up to len(PALETTE)
runs; runs older than schema 0002 (no seq) use a hash of their id. Nothing depends on which
other runs are shown. The palette is mid-lightness, readable on white and on Streamlit's dark
background; consecutive entries are far apart in hue (steps of 105 degrees).
"""

from __future__ import annotations

import colorsys
import zlib
from collections.abc import Iterable, Mapping
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


def run_color(run_id: str, seq: object = None) -> str:
    """The run's own colour (see the module docstring)."""
    known = seq is not None and not pd.isna(seq)
    n = int(seq) if known else zlib.crc32(run_id.encode())  # type: ignore[call-overload]
    return PALETTE[n % PALETTE_SIZE]


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


def field_value(cfg: Mapping[str, object], field: str) -> str:
    """A config field's value as a legend key ("" when the run lacks it)."""
    value = cfg.get(field)
    return "" if value is None else str(value)


def colors_for(runs: pd.DataFrame, by: str, *, legend: bool = False) -> tuple[Colors, dict]:
    """Colours of the chosen runs (db_gateway.Selection.runs: id, run_label, arch, seq, config)
    coloured `by` "run", "architecture" or a config field; returns the Colors and, per run id,
    its key (the value of the `colour` column the page adds to the chart data)."""
    if by == "run":
        keys = dict(zip(runs["id"], runs["run_label"], strict=True))
        mapping = {
            label: run_color(run_id, seq)
            for run_id, label, seq in zip(runs["id"], runs["run_label"], runs["seq"], strict=True)
        }
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
