"""The `gradscope` command: every command has help, train/runs/show work, bad input writes
nothing."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import click
import pytest
import typer.main
from typer.testing import CliRunner

from runner.cli import app

runner = CliRunner()


def all_commands() -> list[list[str]]:
    """Every command path, nested groups included."""
    paths: list[list[str]] = []

    def walk(cmd: click.Command, prefix: list[str]) -> None:
        paths.append(prefix)
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                walk(sub, [*prefix, name])

    walk(typer.main.get_command(app), [])
    return paths


@pytest.mark.parametrize("path", all_commands(), ids=lambda p: " ".join(p) or "gradscope")
def test_every_command_has_help(path: list[str]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    assert len(result.output.strip().splitlines()) > 3


def test_config_fields_are_kebab_case_options() -> None:
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    for option in ("--batch-size", "--test-fraction", "--block-activation", "--lr", "--init"):
        assert option in result.output


def test_train_json_runs_and_show(db_path) -> None:  # noqa: ANN001
    args = [
        "--db",
        str(db_path),
        "--arch",
        "relu",
        "--depth",
        "3",
        "--width",
        "8",
        "--samples",
        "200",
        "--epochs",
        "2",
        "--name",
        "<b>mine</b>",
    ]
    result = runner.invoke(app, ["train", *args, "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["status"] == "completed"
    assert doc["config"]["arch"] == "relu" and doc["config"]["depth"] == 3
    assert [e["epoch"] for e in doc["epochs"]] == [1, 2]
    assert {"train_loss", "train_acc", "test_loss", "test_acc", "pred_std"} <= set(doc["epochs"][0])
    assert [la["index"] for la in doc["layers"]] == [0, 1, 2, 3]
    assert len(doc["layer_stats"]) == 2 * 4
    assert {"grad_norm", "update_ratio", "act_std", "dead_frac"} <= set(doc["layer_stats"][0])

    listed = json.loads(runner.invoke(app, ["runs", "--db", str(db_path), "--json"]).stdout)
    assert [(r["id"], r["epochs_done"], r["name"]) for r in listed] == [
        (doc["id"], 2, "<b>mine</b>")
    ]
    shown = runner.invoke(app, ["show", doc["id"][:8], "--db", str(db_path), "--json"])
    assert json.loads(shown.stdout)["layer_stats"] == doc["layer_stats"]
    table = runner.invoke(app, ["runs", "--db", str(db_path)], env={"COLUMNS": "200"})
    assert doc["id"][:8] in table.output and "completed" in table.output


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--depth", "0"], "depth"),
        (["--lr", "nan"], "lr"),
        (["--arch", "tanh"], "arch"),
        (["--dataset", "mnist"], "dataset"),
        (["--width", "ten"], "width"),
        (["--test-fraction", "1.5"], "test_fraction"),
    ],
)
def test_bad_config_exits_nonzero_naming_the_field_and_writes_nothing(
    db_path, args: list[str], field: str
) -> None:  # noqa: ANN001
    result = runner.invoke(app, ["train", "--db", str(db_path), *args])
    assert result.exit_code != 0
    assert field in result.output
    assert "Traceback" not in result.output
    if db_path.exists():
        with sqlite3.connect(db_path) as conn:
            assert conn.execute("SELECT count(*) FROM runs").fetchone()[0] == 0


def test_db_env_var_and_upgrade(tmp_path) -> None:  # noqa: ANN001
    target = tmp_path / "env.db"
    env = {**os.environ, "GRADSCOPE_DB": str(target)}
    done = subprocess.run(
        [sys.executable, "-m", "runner.cli", "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "0001_initial" in done.stdout and target.exists()
    listed = subprocess.run(
        [sys.executable, "-m", "runner.cli", "runs", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(listed.stdout) == []
