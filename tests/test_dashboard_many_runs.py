"""Compare with many runs (issue 24, items 1-3): every line its own colour, the classic sweep
coloured by architecture, short legend labels, one line about retries, the colour choice and
seed grouping in the URL, a folded run picker, and collapsed runs drawn in the prediction
spread."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import streamlit as st
from dashboard_helpers import add_run, assert_ok, chart_titled, open_app
from sqlalchemy import update

from gradscope.dashboard.colors import PALETTE_SIZE, run_color
from gradscope.db.engine import make_engine
from gradscope.db.models import RunModel
from gradscope.vocab.sweep import run_name

ARCHS = ("sigmoid", "relu", "resnet")
DEPTHS = (1, 2, 3, 4)
SEEDS = (0, 1, 2)


def classic_sweep(db: Path, name: str = "depth sweep") -> list[str]:
    """36 runs as `gradscope sweep --arch sigmoid,relu,resnet --depth ... --seed 0,1,2` makes
    them, with the sweep's generated names (the sigmoid runs collapse: spread 0)."""
    engine = make_engine(str(db))
    sweep = (str(uuid.uuid4()), name)
    ids = []
    for arch in ARCHS:
        for depth in DEPTHS:
            for seed in SEEDS:
                described = f"arch={arch} depth={depth} seed={seed}"
                ids.append(
                    add_run(
                        engine,
                        arch=arch,
                        depth=depth,
                        grad_norms=tuple(0.1 * (k + 1) for k in range(depth + 1)),
                        seed=seed,
                        sweep=sweep,
                        name=run_name(name, described),
                        pred_std=0.0 if arch == "sigmoid" else 0.2,
                        epochs=1,
                    )
                )
    engine.dispose()
    return ids


@pytest.fixture
def sweep_db(tmp_path: Path) -> tuple[Path, list[str]]:
    db = tmp_path / "sweep.db"
    return db, classic_sweep(db)


def flow_colours(at) -> dict[str, str]:  # noqa: ANN001
    (flow,) = chart_titled(at, "Gradient flow")
    views = [flow.spec, *flow.spec.get("layer", [])]  # grouped seeds: a band under the line
    scale = next(v["encoding"]["color"]["scale"] for v in views if "encoding" in v)
    return dict(zip(scale["domain"], scale["range"], strict=True))


def open_compare(monkeypatch: pytest.MonkeyPatch, db: Path, ids: list[str], **params: str):  # noqa: ANN201
    return open_app(monkeypatch, db, "compare", {"runs": ",".join(ids), **params})


# -- item 1: no two lines share a colour -------------------------------------------------------


def test_runs_24_apart_get_different_colours_on_the_page(
    monkeypatch: pytest.MonkeyPatch, db_path: Path
) -> None:
    engine = make_engine(str(db_path))
    ids = [add_run(engine, seed=k, epochs=1) for k in range(PALETTE_SIZE + 2)]
    engine.dispose()
    first, late, other = ids[0], ids[PALETTE_SIZE], ids[1]
    at = open_compare(monkeypatch, db_path, [late, other, first])
    (flow,) = chart_titled(at, "Gradient flow")
    label_of = dict(zip(flow.data["run_id"], flow.data["run_label"], strict=True))
    colours = flow_colours(at)
    assert len(set(colours.values())) == 3
    # The earlier run keeps its own colour (the one it has alone); the later one moved.
    assert colours[label_of[first]] == run_color(first, 1)
    # Alone, the later run has its own colour again: the same as the first run's.
    (alone,) = flow_colours(open_compare(monkeypatch, db_path, [late])).values()
    assert alone == run_color(late, PALETTE_SIZE + 1) == run_color(first, 1)


def test_grouped_seeds_never_share_a_colour(
    monkeypatch: pytest.MonkeyPatch, sweep_db: tuple[Path, list[str]]
) -> None:
    db, ids = sweep_db
    at = open_compare(monkeypatch, db, ids, colour="run", group="seeds")
    assert_ok(at)
    colours = flow_colours(at)
    assert len(colours) == len(ARCHS) * len(DEPTHS)  # a line per group
    assert len(set(colours.values())) == len(colours)


def test_past_the_palette_the_page_says_so_and_suggests_a_field(
    monkeypatch: pytest.MonkeyPatch, sweep_db: tuple[Path, list[str]]
) -> None:
    db, ids = sweep_db
    at = open_compare(monkeypatch, db, ids, colour="run")
    assert at.selectbox(key="compare_colour_by").value == "run"
    colours = flow_colours(at)
    assert len(set(colours.values())) == PALETTE_SIZE  # all of them before any repeats
    (warning,) = [w.value for w in at.warning if "colours" in w.value]
    text = warning.replace("\\", "")
    assert "36 lines" in text and "Colour by architecture" in text
    # Fewer lines than colours: nothing to say.
    few = open_compare(monkeypatch, db, ids[:PALETTE_SIZE], colour="run")
    assert not [w for w in few.warning if "colours" in w.value]


# -- item 2: defaults for many runs -------------------------------------------------------------


def test_many_runs_are_coloured_by_architecture_with_short_labels(
    monkeypatch: pytest.MonkeyPatch, sweep_db: tuple[Path, list[str]]
) -> None:
    db, ids = sweep_db
    at = open_compare(monkeypatch, db, ids)
    assert at.selectbox(key="compare_colour_by").value == "architecture"
    assert at.query_params["colour"] == "architecture"
    assert set(flow_colours(at)) == set(ARCHS)
    (flow,) = chart_titled(at, "Gradient flow")
    labels = set(flow.data["run_label"])
    assert len(labels) == 36
    # The fields that differ, not the sweep's name 36 times over (and no ids: none needed).
    assert "arch=relu depth=2 seed=1" in labels
    assert not any(label.startswith("depth sweep") or "·" in label for label in labels)
    # A few runs are still coloured by run, each its own colour.
    few = open_compare(monkeypatch, db, ids[:5])
    assert few.selectbox(key="compare_colour_by").value == "run"
    assert len(set(flow_colours(few).values())) == 5
    assert set(flow_colours(few)) == {f"depth=1 seed={s}" for s in SEEDS} | {
        "depth=2 seed=0",
        "depth=2 seed=1",
    }


def test_a_name_a_person_gave_is_kept_in_the_legend(
    monkeypatch: pytest.MonkeyPatch, db_path: Path
) -> None:
    engine = make_engine(str(db_path))
    ids = [add_run(engine, name="baseline", epochs=1), add_run(engine, seed=3, epochs=1)]
    ids.append(add_run(engine, name="baseline", seed=4, epochs=1))
    engine.dispose()
    labels = set(flow_colours(open_compare(monkeypatch, db_path, ids)))
    assert "seed=3" in labels
    # Two runs named alike are told apart by a short id.
    assert sorted(lbl.split(" · ")[0] for lbl in labels if lbl != "seed=3") == ["baseline"] * 2
    assert all(len(lbl) < 20 for lbl in labels)


def test_attempts_are_one_line_or_none(
    monkeypatch: pytest.MonkeyPatch, sweep_db: tuple[Path, list[str]]
) -> None:
    db, ids = sweep_db
    at = open_compare(monkeypatch, db, ids)
    assert not [c for c in at.caption if "ttempt" in c.value or "Retried" in c.value]
    engine = make_engine(str(db))
    with engine.begin() as conn:
        conn.execute(update(RunModel).where(RunModel.id.in_(ids[:6])).values(attempts=2))
    engine.dispose()
    st.cache_data.clear()  # attempts change with a run's status, which the cache keys follow
    at = open_compare(monkeypatch, db, ids)
    (line,) = [c.value for c in at.caption if "Retried" in c.value]
    assert "\n" not in line and "and 2 more" in line and line.count("2 attempts") == 4


def test_colour_by_and_group_seeds_live_in_the_url(
    monkeypatch: pytest.MonkeyPatch, sweep_db: tuple[Path, list[str]]
) -> None:
    db, ids = sweep_db
    at = open_compare(monkeypatch, db, ids, colour="depth", group="seeds")
    assert at.selectbox(key="compare_colour_by").value == "depth"
    assert at.toggle(key="compare_group_seeds").value is True
    (flow,) = chart_titled(at, "Gradient flow")
    assert flow.data["run_label"].nunique() == len(ARCHS) * len(DEPTHS)
    at.selectbox(key="compare_colour_by").set_value("architecture").run()
    at.toggle(key="compare_group_seeds").set_value(False).run()
    assert_ok(at)
    assert at.query_params["colour"] == "architecture"
    assert at.query_params["group"] == "none"
    assert at.query_params["runs"] == ",".join(ids)
    # An unknown value in a link falls back to the default.
    at = open_compare(monkeypatch, db, ids, colour="nonsense", group="maybe")
    assert at.selectbox(key="compare_colour_by").value == "architecture"
    assert at.toggle(key="compare_group_seeds").value is False


def test_the_run_picker_folds_away_past_a_few_runs(
    monkeypatch: pytest.MonkeyPatch, sweep_db: tuple[Path, list[str]]
) -> None:
    """36 chips would push the gradient flow below the first screen."""
    db, ids = sweep_db
    at = open_compare(monkeypatch, db, ids)
    folded = [e for e in at.expander if any(m.key == "compare_runs" for m in e.multiselect)]
    assert len(folded) == 1 and "36" in folded[0].label
    assert not folded[0].proto.expanded
    few = open_compare(monkeypatch, db, ids[:3])
    assert not [e for e in few.expander if any(m.key == "compare_runs" for m in e.multiselect)]
    assert few.multiselect(key="compare_runs").value == ids[:3]
    # Unfolded or not, it is the same picker: removing a run still works.
    at.multiselect(key="compare_runs").unselect(ids[0]).run()
    assert at.query_params["runs"] == ",".join(ids[1:])


# -- item 3: collapsed runs stay in the prediction spread ----------------------------------------


def test_the_prediction_spread_draws_the_collapsed_runs(
    monkeypatch: pytest.MonkeyPatch, sweep_db: tuple[Path, list[str]]
) -> None:
    db, ids = sweep_db
    at = open_compare(monkeypatch, db, ids)
    (spread,) = chart_titled(at, "Prediction spread")
    drawn = spread.data
    assert drawn["run_id"].nunique() == 36  # the 12 collapsed sigmoid runs included
    sigmoid = drawn[drawn["run_label"].str.startswith("arch=sigmoid")]
    assert len(sigmoid) == 12 and sigmoid["at_floor"].all()
    assert (sigmoid["pred_std"] > 0).all()  # at the floor, drawable on a log axis
    assert "12 value(s) exactly 0" in " ".join(spread.spec["title"]["subtitle"])
    assert "not drawn" not in " ".join(spread.spec["title"]["subtitle"])
