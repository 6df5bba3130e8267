"""Run colours (gradscope.dashboard.colors): from the run, not its place in a selection; readable on
both themes; architecture colours fixed."""

from __future__ import annotations

import uuid

import pandas as pd

from gradscope.dashboard.colors import ARCH_COLORS, PALETTE, _luminance, colors_for, run_color

WHITE, DARK = 1.0, _luminance((14 / 255, 17 / 255, 23 / 255))  # Streamlit's dark background


def contrast(a: float, b: float) -> float:
    return (max(a, b) + 0.05) / (min(a, b) + 0.05)


def rgb(hex_color: str) -> tuple[float, float, float]:
    return tuple(int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5))  # type: ignore[return-value]


def test_palette_has_20_plus_distinct_colours_readable_on_both_themes() -> None:
    assert len(set(PALETTE)) >= 20
    for color in [*PALETTE, *ARCH_COLORS.values()]:
        lum = _luminance(rgb(color))
        assert contrast(lum, WHITE) >= 2.5, color
        assert contrast(lum, DARK) >= 3.0, color


def test_runs_created_together_get_different_colours_and_keep_them() -> None:
    ids = [str(uuid.uuid4()) for _ in range(24)]
    colours = [run_color(i, seq) for seq, i in enumerate(ids, start=1)]
    assert len(set(colours)) == 24  # a 24-run sweep: no two alike
    frame = pd.DataFrame(
        {
            "id": ids,
            "run_label": [f"run {k}" for k in range(24)],
            "seq": range(1, 25),
            "arch": ["relu"] * 24,
            "config": [{"lr": 0.1}] * 24,
        }
    )
    one, _ = colors_for(frame.iloc[[3, 7]], "run")
    other, _ = colors_for(frame.iloc[[7, 12, 3]], "run")
    assert one.mapping()["run 7"] == other.mapping()["run 7"] == colours[7]
    assert one.mapping()["run 3"] == other.mapping()["run 3"]
    # A run older than schema 0002 (no seq) still has a colour of its own, every time.
    assert run_color(ids[0], None) == run_color(ids[0], float("nan")) in PALETTE


def test_architecture_colours_are_fixed() -> None:
    frame = pd.DataFrame(
        {
            "id": ["a", "b"],
            "run_label": ["a", "b"],
            "seq": [1, 2],
            "arch": ["resnet", "sigmoid"],
            "config": [{}, {}],
        }
    )
    colors, keys = colors_for(frame, "architecture")
    assert colors.mapping() == {"resnet": ARCH_COLORS["resnet"], "sigmoid": ARCH_COLORS["sigmoid"]}
    assert keys == {"a": "resnet", "b": "sigmoid"}
