"""The moment of divergence travels: a real diverging run (resnet-20, SGD lr 0.1) keeps its
first_nonfinite_step and finite_* layer statistics through `gradscope export` / `import` (a run
file) and shows them in the `export-csv` epochs and layers tables. About 1 s of training."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import pytest
import torch
from sqlalchemy import Engine
from typer.testing import CliRunner

from gradscope.cli.main import app
from gradscope.db.engine import make_engine
from gradscope.db.queries import run_document
from gradscope.runner.foreground import train_foreground
from gradscope.vocab.fields import DIVERGENCE_LAYER_FIELDS

cli = CliRunner()
# As in tests/test_diagnosis_runs.py: max |g| grows to ~1e12 by step 3, NaN at step 4.
EXPLODING = {"arch": "resnet", "depth": "20", "width": "32", "optimizer": "sgd", "lr": "0.1",
             "samples": "1024", "epochs": "1", "device": "cpu", "name": "boom"}  # fmt: skip


@pytest.fixture(scope="module")
def diverged(tmp_path_factory: pytest.TempPathFactory) -> tuple[Engine, str]:
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("div") / "runs.db"
    engine = make_engine(f"sqlite:///{path}", create=True)
    run_id, _ = train_foreground(engine, EXPLODING, progress=False)
    return engine, run_id


def _moment(doc: dict) -> tuple[list, list]:
    steps = [e["first_nonfinite_step"] for e in doc["epochs"]]
    stats = [tuple(s[k] for k in DIVERGENCE_LAYER_FIELDS) for s in doc["layer_stats"]]
    return steps, sorted(stats)


def test_the_divergence_moment_survives_export_and_import(diverged, tmp_path: Path) -> None:  # noqa: ANN001
    engine, run_id = diverged
    before = run_document(engine, run_id)
    steps, stats = _moment(before)
    assert steps == [4] and stats and all(v is not None for row in stats for v in row)

    out = tmp_path / "share.db"
    db = str(engine.url.database)
    result = cli.invoke(app, ["export", str(out), "--db", db, "--run", run_id])
    assert result.exit_code == 0, result.output
    target = tmp_path / "other.db"
    make_engine(f"sqlite:///{target}", create=True).dispose()
    result = cli.invoke(app, ["import", str(out), "--db", str(target)])
    assert result.exit_code == 0, result.output

    imported = make_engine(f"sqlite:///{target}")
    try:
        assert _moment(run_document(imported, run_id)) == (steps, stats)
    finally:
        imported.dispose()


def test_the_divergence_moment_is_in_the_csv_tables(diverged, tmp_path: Path) -> None:  # noqa: ANN001
    engine, run_id = diverged
    out = tmp_path / "csv"
    result = cli.invoke(app, ["export-csv", str(out), "--db", str(engine.url.database)])
    assert result.exit_code == 0, result.output
    epochs = pd.read_csv(out / "epochs.csv")
    assert epochs["first_nonfinite_step"].tolist() == [4.0]
    layers = pd.read_csv(out / "layers.csv")
    doc = run_document(engine, run_id)
    for field in DIVERGENCE_LAYER_FIELDS:
        assert field in layers.columns
        want = {s["layer"]: s[field] for s in doc["layer_stats"]}
        got = dict(zip(layers["layer"], layers[field], strict=True))
        assert got.keys() == want.keys()
        for layer, value in want.items():
            assert got[layer] == pytest.approx(value, rel=1e-12)
            assert math.isfinite(got[layer])
