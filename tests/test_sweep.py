"""Sweeps: grid expansion, all-or-nothing validation, sweep id/name, optional grouping."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradscope.cli import app
from gradscope.db.engine import make_engine
from gradscope.db.lifecycle import queue_sweep
from gradscope.db.queries import list_runs
from gradscope.vocab.config import ConfigError, make_config
from gradscope.vocab.grouping import group_key
from gradscope.vocab.sweep import expand_grid, parse_grid, plan_sweep


def test_grid_is_the_cartesian_product_in_option_order() -> None:
    grid = parse_grid({"seed": "0,1", "arch": "sigmoid, relu,resnet", "depth": "2,5,2"})
    assert grid == {"arch": ["sigmoid", "relu", "resnet"], "depth": ["2", "5"], "seed": ["0", "1"]}
    combos = expand_grid(grid)
    assert len(combos) == 12
    assert combos[0] == {"arch": "sigmoid", "depth": "2", "seed": "0"}
    assert combos[1] == {"arch": "sigmoid", "depth": "2", "seed": "1"}
    assert combos[-1] == {"arch": "resnet", "depth": "5", "seed": "1"}
    assert len({tuple(c.items()) for c in combos}) == 12


def test_plan_shares_one_sweep_id_and_name() -> None:
    plan = plan_sweep({"arch": "sigmoid,relu", "depth": "2,3", "width": "8"}, name="depths")
    assert plan.size == 4
    assert {s.sweep_id for s in plan.specs} == {plan.sweep_id}
    assert {s.sweep_name for s in plan.specs} == {"depths"}
    assert plan.specs[3].name == "depths: arch=relu depth=3"
    assert {s.config["width"] for s in plan.specs} == {8}
    assert all(s.group_id is None for s in plan.specs)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"depth": "2,x,5"}, "depth: Input should be a valid integer"),
        ({"arch": "relu,tanh"}, "arch: Input should be"),
        ({"depth": "2,,5"}, "depth: empty value"),
        (
            {"optimizer": "sgd,adam", "momentum": "0.9"},
            "optimizer=adam: config: momentum applies to sgd only",
        ),
    ],
)
def test_one_bad_value_rejects_the_whole_grid(values: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        plan_sweep(values)
    assert message in str(info.value)


def test_grid_size_is_bounded() -> None:
    seeds = ",".join(str(i) for i in range(101))
    depths = ",".join(str(i) for i in range(1, 101))
    with pytest.raises(ConfigError, match="10100 runs; a sweep holds at most 10000"):
        plan_sweep({"seed": seeds, "depth": depths})


def test_batch_groups_runs_of_one_shape_in_chunks() -> None:
    plan = plan_sweep(
        {"arch": "sigmoid,relu", "seed": "0,1,2,3,4", "lr": "0.01,0.1"},
        batch=True,
        group_size=4,
    )
    groups: dict[str, list] = {}
    for s in plan.specs:
        groups.setdefault(s.group_id, []).append(s)
    # 10 runs per architecture, at most 4 a group: three near-equal chunks (4, 3, 3) each.
    assert sorted(len(g) for g in groups.values()) == [3, 3, 3, 3, 4, 4]
    for members in groups.values():
        assert len({group_key(make_config(s.config)) for s in members}) == 1
        assert [s.group_index for s in members] == list(range(len(members)))
    one_left = plan_sweep({"depth": "2,3"}, batch=True)
    assert [s.group_id for s in one_left.specs] == [None, None]  # no group of one
    unbatched = plan_sweep({"seed": "0,1,2"}, batch=False)
    assert {s.group_id for s in unbatched.specs} == {None}


def test_sweeps_are_batched_by_default() -> None:
    plan = plan_sweep({"seed": "0,1,2"})
    assert len({s.group_id for s in plan.specs}) == 1 and plan.specs[0].group_id is not None


def test_sweep_command_queues_all_or_nothing(tmp_path: Path) -> None:
    db = str(tmp_path / "sweep.db")
    cli = CliRunner()
    bad = cli.invoke(app, ["sweep", "--db", db, "--arch", "sigmoid,relu", "--depth", "2,-1"])
    assert bad.exit_code != 0
    assert "nothing was queued" in bad.output
    assert not Path(db).exists()  # not even an empty database was created

    good = cli.invoke(
        app,
        ["sweep", "--db", db, "--arch", "sigmoid,relu,resnet", "--depth", "2,5",
         "--seed", "0,1", "--name", "cure", "--json"],
    )  # fmt: skip
    assert good.exit_code == 0, good.output
    out = json.loads(good.output)
    assert len(out["runs"]) == 12
    engine = make_engine(db)
    runs = list_runs(engine)
    assert len(runs) == 12
    assert {(r.status, r.sweep_id, r.sweep_name) for r in runs} == {
        ("queued", out["sweep_id"], "cure")
    }
    assert {(r.arch, r.depth, r.seed) for r in runs} == {
        (a, d, s) for a in ("sigmoid", "relu", "resnet") for d in (2, 5) for s in (0, 1)
    }
    again = cli.invoke(app, ["sweep", "--db", db, "--depth", "2,5", "--lr", "0.1,zero"])
    assert again.exit_code != 0
    assert len(list_runs(engine)) == 12
    engine.dispose()


def test_submit_validates_and_queues_one_run(tmp_path: Path) -> None:
    db = str(tmp_path / "submit.db")
    cli = CliRunner()
    bad = cli.invoke(app, ["submit", "--db", db, "--depth", "0"])
    assert bad.exit_code != 0
    assert "depth" in bad.output
    ok = cli.invoke(app, ["submit", "--db", db, "--arch", "relu", "--depth", "4"])
    assert ok.exit_code == 0, ok.output
    engine = make_engine(db)
    [run] = list_runs(engine)
    assert (run.id, run.status, run.arch, run.depth) == (ok.output.strip(), "queued", "relu", 4)
    engine.dispose()


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("bell\x07", "name: must not contain control characters"),
        ("two\nlines", "name: must not contain control characters"),
        ("x" * 201, "name: String should have at most 200 characters"),
    ],
)
def test_sweep_name_is_checked_like_a_run_name(name: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        plan_sweep({"arch": "sigmoid,relu"}, name=name)


def test_sweep_name_is_stripped_and_a_blank_one_gets_a_default() -> None:
    assert plan_sweep({"arch": "sigmoid,relu"}, name="  depths  ").name == "depths"
    assert plan_sweep({"arch": "sigmoid,relu"}, name="   ").name == "sweep of arch"


def long_name_plan():  # noqa: ANN201
    """A 200-character sweep name: every generated run name would be over 200 characters."""
    return plan_sweep({"arch": "sigmoid,relu", "depth": "2,3", "seed": "0,1"}, name="n" * 200)


def test_generated_run_names_fit_the_name_column() -> None:
    plan = long_name_plan()
    names = [s.name for s in plan.specs]
    assert all(len(n) <= 200 for n in names)
    # The sweep's name is shortened, so what tells the runs apart is kept whole.
    assert names[0].endswith("…: arch=sigmoid depth=2 seed=0")
    assert names[-1].endswith("…: arch=relu depth=3 seed=1")
    assert len(set(names)) == len(names)
    assert {s.sweep_name for s in plan.specs} == {"n" * 200}
    # A description too long to leave room for the sweep's name is cut at the end instead.
    paths = [f"csv:/{letter * 190}.csv" for letter in "ab"]
    huge = plan_sweep({"dataset": ",".join(paths)}, name="long paths")
    assert [s.name for s in huge.specs] == [f"long paths: dataset={p}"[:199] + "…" for p in paths]


@pytest.mark.postgres
def test_a_sweep_with_a_long_name_is_queued_on_postgresql(pg_url: str) -> None:
    # PostgreSQL refuses a name over the column's 200 characters (and with it the whole sweep).
    plan = long_name_plan()
    engine = make_engine(pg_url)
    try:
        ids = queue_sweep(engine, plan)
        assert sorted(r.name for r in list_runs(engine)) == sorted(s.name for s in plan.specs)
        assert len(ids) == 8
    finally:
        engine.dispose()
