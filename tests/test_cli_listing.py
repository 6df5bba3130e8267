"""Listing and showing runs in the terminal (issue 24, item 5): `show --json --epoch`, a runs
table that tells rows apart at 80 columns, every filter checked the same way, and
`train --device cuda` refused before anything is written."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from dashboard_helpers import add_run
from typer.testing import CliRunner

from gradscope.cli import app
from gradscope.db.annotate import set_tags
from gradscope.db.engine import make_engine

runner = CliRunner()
SWEEP = ["--arch", "sigmoid,relu,resnet", "--depth", "2,5,10,20", "--seed", "0,1,2"]


def _rows(output: str) -> list[str]:
    """The table's body lines (after the rule under the header)."""
    lines = output.splitlines()
    rule = next(i for i, line in enumerate(lines) if line.strip().startswith("─"))
    return [line for line in lines[rule + 1 :] if line.strip()]


# -- show --json --epoch --------------------------------------------------------------------------


def test_show_json_honours_epoch(db_path: Path) -> None:
    engine = make_engine(str(db_path))
    run_id = add_run(engine, depth=2, epochs=3)
    engine.dispose()
    db = ["--db", str(db_path)]
    whole = json.loads(runner.invoke(app, ["show", run_id[:8], *db, "--json"]).stdout)
    assert {s["epoch"] for s in whole["layer_stats"]} == {1, 2, 3}
    for epoch in (1, 3):
        one = json.loads(
            runner.invoke(app, ["show", run_id[:8], *db, "--json", "--epoch", str(epoch)]).stdout
        )
        assert {s["epoch"] for s in one["layer_stats"]} == {epoch}
        assert len(one["layer_stats"]) == 3  # every layer at that epoch
        assert one["layers_epoch"] == epoch
        assert one["epochs"] == whole["epochs"]  # the metrics are the run's, whole
    missing = runner.invoke(app, ["show", run_id[:8], *db, "--json", "--epoch", "9"])
    assert missing.exit_code == 2 and "--epoch 9" in missing.output


# -- the runs table at 80 columns ---------------------------------------------------------------


@pytest.fixture
def swept(tmp_path: Path) -> str:
    db = str(tmp_path / "sweep.db")
    done = runner.invoke(app, ["sweep", "--db", db, *SWEEP, "--name", "depth sweep"])
    assert done.exit_code == 0, done.output
    return db


def test_runs_at_80_columns_show_what_tells_the_rows_apart(swept: str) -> None:
    listed = runner.invoke(app, ["runs", "--db", swept], env={"COLUMNS": "80"})
    assert listed.exit_code == 0, listed.output
    assert max(len(line) for line in listed.stdout.splitlines()) <= 80
    rows = _rows(listed.stdout)
    assert len(rows) == 36
    # Without its id, every row still differs from every other: the seed is shown.
    assert len({row.split(maxsplit=1)[1] for row in rows}) == 36
    assert all("seed=" in row for row in rows)
    assert not any("depth sweep" in row or "…" in row for row in rows)
    # What every run shares is said once, not in a column.
    assert "dataset: moons (every run listed)" in listed.stdout.splitlines()[:3]


def test_a_name_a_person_gave_is_listed(db_path: Path) -> None:
    engine = make_engine(str(db_path))
    add_run(engine, name="baseline", seed=0)
    add_run(engine, name="the other one", seed=1, dataset="circles")
    engine.dispose()
    listed = runner.invoke(app, ["runs", "--db", str(db_path)], env={"COLUMNS": "80"})
    text = listed.stdout
    assert "baseline" in text and "the other one" in text and "circles" in text


def test_runs_created_together_are_listed_in_creation_order(swept: str) -> None:
    listed = json.loads(runner.invoke(app, ["runs", "--db", swept, "--json"]).stdout)
    assert [r["seq"] for r in listed] == sorted(r["seq"] for r in listed)
    later = runner.invoke(app, ["submit", "--db", swept, "--name", "later"])
    assert later.exit_code == 0
    listed = json.loads(runner.invoke(app, ["runs", "--db", swept, "--json"]).stdout)
    assert listed[0]["name"] == "later"  # the newest batch first
    assert [r["seq"] for r in listed[1:]] == sorted(r["seq"] for r in listed[1:])


# -- filters ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--status", "finished", "is not a run status"),
        ("--arch", "foo", "is not an architecture"),
        ("--arch", "Relu", "is not an architecture"),
        ("--sweep", "nope", "no sweep 'nope' here; sweeps here: 'depth sweep'"),
        ("--tag", "nope", "no run carries 'nope'; tags here: 'keep'"),
    ],
)
@pytest.mark.parametrize("json_out", [False, True])
def test_every_filter_is_checked_the_same_way(
    swept: str, option: str, value: str, said: str, json_out: bool
) -> None:
    first = json.loads(runner.invoke(app, ["runs", "--db", swept, "--json"]).stdout)[0]
    set_tags(make_engine(swept), first["id"], add=["keep"])
    args = ["runs", "--db", swept, option, value, *(["--json"] if json_out else [])]
    result = runner.invoke(app, args, env={"COLUMNS": "80"})
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.replace("│", " ").split())
    assert f"Invalid value for '{option}'" in text and said in text
    assert result.stdout.strip() == "" or "Usage" in result.output  # no table, no JSON


@pytest.mark.parametrize(
    ("option", "value", "count"),
    [("--arch", "relu", 12), ("--sweep", "depth sweep", 36), ("--tag", "keep", 1)],
)
def test_filters_that_name_something_there_still_list(
    swept: str, option: str, value: str, count: int
) -> None:
    first = json.loads(runner.invoke(app, ["runs", "--db", swept, "--json"]).stdout)[0]
    set_tags(make_engine(swept), first["id"], add=["keep"])
    listed = runner.invoke(app, ["runs", "--db", swept, "--json", option, value])
    assert listed.exit_code == 0, listed.output
    assert len(json.loads(listed.stdout)) == count


def test_custom_runs_can_be_listed_by_arch(db_path: Path) -> None:
    make_engine(str(db_path)).dispose()
    result = runner.invoke(app, ["runs", "--db", str(db_path), "--arch", "custom", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == []


# -- train --device cuda --------------------------------------------------------------------------


def test_train_on_cuda_without_cuda_is_refused_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", "--db", "new.db", "--device", "cuda", "--epochs", "1"])
    assert result.exit_code == 2, result.output
    said = " ".join(result.output.split())
    assert "cuda" in said and "--device auto" in said and "Traceback" not in said
    assert list(tmp_path.iterdir()) == []


REFUSE_WITHOUT_TORCH = """
import sys
from typer.testing import CliRunner
from gradscope.cli import app
result = CliRunner().invoke(app, ["train", "--db", sys.argv[1], *sys.argv[2:]])
print(result.exit_code, "torch" in sys.modules)
"""


@pytest.mark.slow  # a process of its own, to see what it imports
@pytest.mark.parametrize("args", [["--depth", "0"], ["--device", "cpu", "--lr", "-1"]])
def test_a_refused_setting_loads_no_torch(tmp_path: Path, args: list[str]) -> None:
    db = tmp_path / "new.db"
    done = subprocess.run(
        [sys.executable, "-c", REFUSE_WITHOUT_TORCH, str(db), *args],
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.split() == ["2", "False"], done.stdout + done.stderr
    assert not db.exists()
