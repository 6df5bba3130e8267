"""A fast subset of benchmarks/diagnosis_holdout.py: models unlike the zoo's, never used to tune
a rule, recorded through the public API and read back with `gradscope show --json` (the CLI, in
process), each compared with its ground truth measured there in plain PyTorch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from script_loader import load_script
from typer.testing import CliRunner

from gradscope.cli import app

_HOLDOUT = Path(__file__).resolve().parents[1] / "benchmarks" / "diagnosis_holdout.py"
# The cheapest runs (about 1-2 s each): a healthy imbalanced 5-class net, a dead ReLU6 net and
# a net stuck on the majority class.
FAST = ("leaky-five-imbalanced", "relu6-dead", "five-stuck-on-majority")


@pytest.fixture(scope="module")
def holdout():  # noqa: ANN201
    return load_script(_HOLDOUT)


def show_json(db: str, run_id: str) -> dict:
    result = CliRunner().invoke(app, ["show", run_id, "--db", db, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("name", FAST)
def test_a_held_out_model_is_diagnosed_as_its_ground_truth(
    holdout, tmp_path: Path, name: str
) -> None:  # noqa: ANN001
    import torch

    torch.set_num_threads(1)
    spec = next(s for s in holdout.specs() if s.name == name)
    outcome = holdout.run_spec(spec, str(tmp_path / "holdout.db"), read=show_json)
    assert outcome.truth.kinds == outcome.found, (outcome.truth.kinds, outcome.found)
    if not outcome.truth.kinds:
        assert outcome.warnings == []
