"""Run colours (gradscope.dashboard.colors): from the run, not its place in a selection; readable on
both themes; architecture colours fixed."""

from __future__ import annotations

import uuid

import pandas as pd
import pytest

from gradscope.dashboard.colors import (
    ARCH_COLORS,
    PALETTE,
    PALETTE_SIZE,
    _luminance,
    colors_for,
    run_color,
)

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


def _runs(seqs: list[int | None], arch: str = "relu") -> pd.DataFrame:
    ids = [f"{k:04d}-{uuid.uuid4()}" for k in range(len(seqs))]
    return pd.DataFrame(
        {
            "id": ids,
            "run_label": [f"run {k}" for k in range(len(seqs))],
            "seq": seqs,
            "arch": [arch] * len(seqs),
            "config": [{"lr": 0.1, "seed": k} for k in range(len(seqs))],
        }
    )


def test_runs_24_apart_never_share_a_colour_in_one_view() -> None:
    """Their own colours are equal (creation number modulo 24): the later run moves."""
    frame = _runs([3, 27, 51, 4, 28])  # 3, 27 and 51 share an own colour; 4 and 28 another
    colors, keys = colors_for(frame, "run")
    assert len(set(colors.range)) == 5 and colors.repeats == 0 and colors.note() is None
    mapping = colors.mapping()
    assert mapping["run 0"] == run_color(frame["id"][0], 3)  # the earliest keeps its own
    assert mapping["run 3"] == run_color(frame["id"][3], 4)
    # The order chosen does not decide who moves: creation does.
    shuffled, _ = colors_for(frame.iloc[[2, 4, 1, 3, 0]], "run")
    assert shuffled.mapping() == mapping
    # Alone, a later run has its own colour again.
    alone, _ = colors_for(frame.iloc[[1]], "run")
    assert alone.mapping()["run 1"] == run_color(frame["id"][1], 27)


def test_a_run_keeps_its_colour_unless_it_collides() -> None:
    frame = _runs(list(range(1, 11)))
    few, _ = colors_for(frame.iloc[[2, 5, 7]], "run")
    more, _ = colors_for(frame, "run")
    assert all(more.mapping()[k] == c for k, c in few.mapping().items())


def test_runs_without_a_creation_number_get_distinct_colours_too() -> None:
    frame = _runs([None] * 24)
    colors, _ = colors_for(frame, "run")
    assert len(set(colors.range)) == 24


def test_seed_groups_coloured_by_run_never_share_a_colour() -> None:
    from gradscope.dashboard.colors import group_colors

    frame = _runs([1, 25, 49, 2, 26])  # three first runs with one own colour
    members = {
        "g1": [frame["id"][0], frame["id"][3]],
        "g2": [frame["id"][1], frame["id"][4]],
        "g3": [frame["id"][2]],
    }
    labels = {"g1": "lr=0.1 · 2 seeds", "g2": "lr=0.2 · 2 seeds", "g3": "lr=0.3 · 1 seed"}
    colors, keys = group_colors(frame, members, labels)
    assert keys == labels
    assert len(set(colors.range)) == 3
    assert colors.mapping()["lr=0.1 · 2 seeds"] == run_color(frame["id"][0], 1)


@pytest.mark.parametrize("n", [25, 36])
def test_past_the_palette_the_view_says_so_and_suggests_a_field(n: int) -> None:
    frame = _runs(list(range(n)))
    colors, _ = colors_for(frame, "run")
    assert len(set(colors.range)) == PALETTE_SIZE  # every colour used before any repeats
    assert colors.repeats == 2 * (n - PALETTE_SIZE)
    note = colors.note("architecture")
    assert note is not None and f"{n} lines" in note and "Colour by architecture" in note


def test_a_field_with_more_values_than_colours_says_so() -> None:
    frame = _runs(list(range(30)))
    colors, _ = colors_for(frame, "seed")
    assert colors.repeats and "values of seed" in (colors.note() or "")


@pytest.mark.parametrize(
    ("configs", "expected"),
    [
        # The classic sweep: architecture, though depth has more values.
        (
            [
                {"arch": a, "depth": d, "seed": s}
                for a in ("sigmoid", "relu", "resnet")
                for d in (2, 5, 10, 20)
                for s in (0, 1, 2)
            ],
            "architecture",
        ),
        ([{"arch": "relu", "lr": lr, "seed": s} for lr in (1e-3, 1e-2) for s in range(7)], "lr"),
        ([{"depth": d, "width": w} for d in range(5) for w in (4, 8)], "depth"),
        ([{"arch": "relu", "seed": s, "name": f"n{s}"} for s in range(20)], None),
    ],
)
def test_the_field_that_varies_most(configs: list[dict], expected: str | None) -> None:
    from gradscope.dashboard.colors import varying_field

    assert varying_field(configs) == expected
