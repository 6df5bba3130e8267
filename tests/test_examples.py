"""The API's examples run as a user would run them (fresh processes, tiny settings) and record
finished custom runs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gradscope.db.engine import make_engine
from gradscope.db.queries import list_runs

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str, *args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, str(ROOT / "examples" / name), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "args", "names", "depth"),
    [
        (
            "own_loop_mlp.py",
            ("--epochs", "2", "--depth", "3"),
            {"own loop sigmoid d3", "own loop relu d3", "own loop resnet d3"},
            4,
        ),
        ("own_loop_cnn.py", ("--epochs", "2"), {"own loop cnn"}, 4),
        ("lightning_callback.py", ("--epochs", "2"), {"lightning moons"}, 6),
        ("hf_trainer_callback.py", ("--epochs", "2"), {"hf tiny bert"}, 22),
    ],
)
def test_example_records_completed_custom_runs(
    tmp_path: Path, script: str, args: tuple[str, ...], names: set[str], depth: int
) -> None:
    db = tmp_path / "own.db"
    printed = run_example(script, "--db", str(db), *args)
    engine = make_engine(str(db))
    runs = list_runs(engine, None, None)
    engine.dispose()
    assert {r.name for r in runs} == names
    for r in runs:
        assert (r.arch, r.status, r.depth) == ("custom", "completed", depth)
        assert (r.epochs_done, r.epochs_total) == (2, 2)
        assert r.id in printed
