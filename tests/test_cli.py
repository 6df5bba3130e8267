"""The `gradscope` command: every command has help, train/runs/show work, bad input writes
nothing."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer.main
from typer.testing import CliRunner

from gradscope.cli import app
from gradscope.db.engine import SCHEMA_REVISION

runner = CliRunner()


def all_commands() -> list[list[str]]:
    """Every command path, nested groups included."""
    paths: list[list[str]] = []

    def walk(cmd: click.Command, prefix: list[str]) -> None:
        paths.append(prefix)
        # A group has `commands` (typer vendors its own click, so no isinstance(click.Group)).
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*prefix, name])

    walk(typer.main.get_command(app), [])
    assert len(paths) > 10, paths  # the walk found the commands, not just the root
    return paths


@pytest.mark.parametrize("path", all_commands(), ids=lambda p: " ".join(p) or "gradscope")
def test_every_command_has_help(path: list[str]) -> None:
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage" in result.output
    assert len(result.output.strip().splitlines()) > 3


def test_the_readme_names_every_command() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    missing = [
        " ".join(["gradscope", *path])
        for path in all_commands()
        if not re.search(rf"gradscope {re.escape(' '.join(path))}\b", readme)
    ]
    assert missing == []


def test_config_fields_are_kebab_case_options() -> None:
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    for option in ("--batch-size", "--test-fraction", "--block-activation", "--lr", "--init"):
        assert option in result.output


@pytest.mark.slow  # trains runs: seconds
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


@pytest.mark.slow  # a gradscope process of its own
def test_db_env_var_and_upgrade(tmp_path) -> None:  # noqa: ANN001
    target = tmp_path / "env.db"
    env = {**os.environ, "GRADSCOPE_DB": str(target)}
    done = subprocess.run(
        [sys.executable, "-m", "gradscope.cli", "db", "upgrade"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert SCHEMA_REVISION in done.stdout and target.exists()
    listed = subprocess.run(
        [sys.executable, "-m", "gradscope.cli", "runs", "--json"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(listed.stdout) == []


@pytest.mark.slow  # trains a run: seconds
def test_user_text_is_printed_as_typed_not_as_markup(db_path) -> None:  # noqa: ANN001
    name = "[/x] [bold]b[/bold] *c*"
    result = runner.invoke(
        app,
        [
            "train",
            "--db",
            str(db_path),
            "--depth",
            "1",
            "--width",
            "4",
            "--samples",
            "64",
            "--epochs",
            "1",
            "--name",
            name,
        ],
    )
    assert result.exit_code == 0, result.output
    table = runner.invoke(app, ["runs", "--db", str(db_path)], env={"COLUMNS": "250"})
    assert table.exit_code == 0 and name in table.output
    bad = runner.invoke(app, ["train", "--db", str(db_path), "--depth", "[/x]"])
    assert bad.exit_code == 2 and "[/x]" in bad.output and "Traceback" not in bad.output


def test_id_prefixes_are_literal_and_missing_databases_are_not_created(db_path) -> None:  # noqa: ANN001
    runner.invoke(
        app,
        [
            "train",
            "--db",
            str(db_path),
            "--depth",
            "1",
            "--width",
            "4",
            "--samples",
            "64",
            "--epochs",
            "1",
        ],
    )
    for pattern in ("____", "%%%%"):
        result = runner.invoke(app, ["show", pattern, "--db", str(db_path)])
        assert result.exit_code == 2 and "no run" in result.output
    missing = db_path.parent / "nothere.db"
    result = runner.invoke(app, ["cancel", "abcd", "--db", str(missing)])
    assert result.exit_code != 0 and "no database at" in result.output
    assert not missing.exists()


def test_json_output_is_strict_json_with_infinities(db_path) -> None:  # noqa: ANN001
    from gradscope.db.engine import make_engine
    from gradscope.db.epoch_writes import EpochWriter
    from gradscope.vocab.config import make_config
    from gradscope.vocab.records import EpochRecord, RunSpec

    store = EpochWriter(make_engine(str(db_path)))
    run_id = store.create_run(RunSpec(make_config({"depth": 1}).model_dump()), status="running")
    store.record_epoch(
        run_id, EpochRecord(1, {"train_loss": float("inf")}, [{"grad_norm": float("-inf")}])
    )
    result = runner.invoke(app, ["show", run_id, "--db", str(db_path), "--json"])

    def refuse(constant: str) -> None:
        raise AssertionError(f"non-standard JSON constant {constant}")

    doc = json.loads(result.stdout, parse_constant=refuse)
    assert doc["epochs"][0]["train_loss"] == "inf"
    assert doc["layer_stats"][0]["grad_norm"] == "-inf"


@pytest.mark.slow  # a training process, interrupted
def test_ctrl_c_stops_a_foreground_run_cleanly(db_path) -> None:  # noqa: ANN001
    import signal
    import time

    from gradscope.db.engine import make_engine
    from gradscope.db.queries import list_runs

    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gradscope.cli",
            "train",
            "--db",
            str(db_path),
            "--quiet",
            "--depth",
            "2",
            "--width",
            "8",
            "--samples",
            "512",
            "--epochs",
            "100000",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        runs = []
        while time.monotonic() < deadline:  # poll until an epoch is stored
            if db_path.exists():
                runs = list_runs(make_engine(str(db_path)))
                if runs and runs[0].epochs_done >= 1:
                    break
            time.sleep(0.1)
        assert runs and runs[0].epochs_done >= 1, proc.stderr.read() if proc.poll() else ""
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    (run,) = list_runs(make_engine(str(db_path)))
    assert run.status == "interrupted" and run.epochs_done >= 1
    assert out == f"{run.id}\n"  # stdout: the id only; the status goes to stderr
    assert f"{run.id[:8]} interrupted" in err


def test_version_is_the_installed_distributions() -> None:
    """`gradscope --version` and `gradscope.__version__` say what pip installed; dir(gradscope)
    lists the API and the subpackages, not typing's names."""
    from importlib.metadata import version

    import gradscope

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"gradscope {version('gradscope')}"
    assert gradscope.__version__ == version("gradscope")
    names = dir(gradscope)
    assert {"init", "Run", "time_gradients", "__version__", "db", "runner"} <= set(names)
    assert not {"Any", "TYPE_CHECKING", "annotations"} & set(names)
