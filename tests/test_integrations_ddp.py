"""One run per training job: a 2-process DDP job (gloo, CPU) is recorded once, by rank 0, under
the model's own layer names, with statistics equal to one process trained on the concatenated
batches; other ranks record nothing (FSDP: tests/test_integrations_fsdp.py)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from integration_helpers import assert_same_statistics, run_ids, run_row
from script_loader import load_script
from torch import nn

import gradscope
from gradscope.api.distributed import SilentRun, job_rank
from gradscope.api.watch import find_layers

ROOT = Path(__file__).resolve().parent.parent


def example_module():  # noqa: ANN201 - the example script, imported for its model and data
    return load_script(ROOT / "examples" / "ddp_one_run.py")


@pytest.mark.slow
def test_a_two_process_ddp_job_is_one_run_equal_to_a_single_process(db_path: Path) -> None:
    out = db_path.parent / "ddp.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "ddp_one_run.py"),
            "--db",
            str(db_path),
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(out.read_text())
    # DDP's all-reduce leaves every rank the same gradient: rank 1 has nothing to add.
    assert found["grad_spread"] <= 1e-7
    (recorded,) = run_ids(db_path, "ddp")  # one run for the job, not one per rank
    assert recorded == found["run_id"]
    row = run_row(db_path, recorded)
    assert (row["status"], row["epochs_done"]) == ("completed", 2)
    config = json.loads(row["config"])["user"]
    assert config["distributed"] == {
        "rank": 0,
        "world_size": 2,
        "backend": "gloo",
        "recorded_by": "rank 0",
    }
    # The reference: one process, the whole batch each step.
    ex = example_module()
    model = ex.make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=ex.LR)
    with gradscope.init(db=str(db_path), name="single", quiet=True) as run:
        run.watch(model, optimizer)
        for _ in range(2):
            for x, y in ex.batches():
                optimizer.zero_grad()
                nn.functional.mse_loss(model(x), y).backward()
                optimizer.step()
            run.log_epoch()
    with sqlite3.connect(db_path) as conn:
        names = [
            r[0] for r in conn.execute("SELECT name FROM run_layers WHERE run_id = ?", (recorded,))
        ]
    assert names == ["0", "2", "4"]  # no `module.` prefix
    assert assert_same_statistics(db_path, recorded, run.id, rtol=1e-5, hist_slack=2) == 2 * 3 * 6


def test_other_ranks_record_nothing(db_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As torchrun starts rank 1: its init() is silent and its watch() measures nothing."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert job_rank() == (1, 2, None)
    model = nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.init(db=str(db_path), name="rank1") as run:
        assert isinstance(run, SilentRun) and run.id is None
        run.watch(model, optimizer)
        model(torch.ones(2, 3)).sum().backward()
        optimizer.step()
        assert not optimizer._optimizer_step_pre_hooks  # nothing measured on this rank
        run.log({"loss": 1.0})
        run.log_epoch(train_loss=1.0)
    assert run.status == "completed"
    assert not db_path.exists()  # not even the database was opened


def test_watch_sees_through_ddp_and_compile_wrappers(tmp_path: Path) -> None:
    """The layer names of DDP(model) and compile(DDP(model)) are the model's own."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
        ddp = nn.parallel.DistributedDataParallel(model)
        for wrapped in (ddp, torch.compile(ddp)):
            assert [layer.info.name for layer in find_layers(wrapped)] == ["0", "2"]
        assert job_rank() == (0, 1, "gloo")
    finally:
        dist.destroy_process_group()
