"""Cheap start: read commands import neither torch nor scikit-learn, training imports neither
scikit-learn (for the synthetic datasets) nor torch's compiler stack, and the generators that
replace scikit-learn's give the same data and splits."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gradscope.db.engine import make_engine
from gradscope.db.epoch_writes import EpochWriter
from gradscope.runner import synthetic
from gradscope.vocab.config import make_config
from gradscope.vocab.records import RunSpec

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json, sys
from gradscope.cli.main import main
sys.argv = ["gradscope", *sys.argv[1:]]
try:
    main()
except SystemExit as exc:
    code = exc.code
heavy = ("torch", "torch._dynamo", "sklearn", "streamlit")
loaded = [m for m in heavy if m in sys.modules]
print(json.dumps({"code": code, "loaded": loaded, "numpy": "numpy" in sys.modules}))
"""


def run_cli(*args: str) -> dict[str, object]:
    """Run the CLI in a fresh interpreter; which heavy modules it loaded, and its exit code."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, env=env, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_read_commands_import_neither_torch_nor_scikit_learn(tmp_path: Path) -> None:
    db = str(tmp_path / "runs.db")
    run_id = EpochWriter(make_engine(db)).create_run(RunSpec(make_config({}).model_dump()))
    for args in (("runs", "--db", db), ("show", run_id, "--db", db)):
        probe = run_cli(*args)
        assert (probe["code"], probe["loaded"]) == (0, []), args


@pytest.mark.slow
def test_queueing_a_sweep_imports_neither_torch_nor_numpy(tmp_path: Path) -> None:
    # `gradscope sweep` only plans and inserts runs: numpy alone cost it ~0.1 s of ~0.5 s.
    grid = ["--arch", "sigmoid,relu", "--seed", "0,1,2", "--epochs", "2", "--batch"]
    probe = run_cli("sweep", "--db", str(tmp_path / "s.db"), *grid)
    assert probe == {"code": 0, "loaded": [], "numpy": False}


@pytest.mark.slow
def test_training_imports_neither_scikit_learn_nor_the_torch_compiler(tmp_path: Path) -> None:
    tiny = ["--samples", "64", "--depth", "2", "--epochs", "1", "--quiet"]
    for optimizer in (["--optimizer", "adam"], ["--optimizer", "sgd", "--momentum", "0.9"]):
        probe = run_cli("train", "--db", str(tmp_path / "t.db"), *tiny, *optimizer)
        assert (probe["code"], probe["loaded"]) == (0, ["torch"]), optimizer


@pytest.mark.parametrize("n", [64, 101, 2048])
@pytest.mark.parametrize("seed", [0, 7])
def test_synthetic_data_and_split_equal_scikit_learn_bit_for_bit(n: int, seed: int) -> None:
    datasets = pytest.importorskip("sklearn.datasets")
    model_selection = pytest.importorskip("sklearn.model_selection")
    ours = synthetic.make_moons(n, 0.2, seed)
    theirs = datasets.make_moons(n, noise=0.2, random_state=seed)
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    ours = synthetic.make_circles(n, 0.1, 0.5, seed)
    theirs = datasets.make_circles(n, noise=0.1, factor=0.5, random_state=seed)
    assert all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
    x, _ = ours
    for y in (ours[1], (np.arange(n) % 3 == 0).astype(np.int64)):  # balanced and not
        for fraction in (0.25, 0.3):
            train, test = synthetic.stratified_split(n, y, fraction, seed)
            split = model_selection.train_test_split(
                x, y, test_size=fraction, random_state=seed, stratify=y
            )
            assert np.array_equal(x[train], split[0]) and np.array_equal(x[test], split[1])
            assert np.array_equal(y[train], split[2]) and np.array_equal(y[test], split[3])


def test_a_split_too_small_for_both_classes_is_refused() -> None:
    with pytest.raises(ValueError, match="only 1 member"):
        synthetic.stratified_split(5, np.array([0, 0, 0, 0, 1]), 0.25, 0)
