"""FSDP2 as one run: a 2-process fully_shard job (gloo, CPU) is recorded once, by rank 0, under
the model's own layer names, with every statistic equal to one process trained on the
concatenated batches, gradscope taking part in one collective per block of steps (and one at
each epoch's close); FSDP1 stays refused with a clear error."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from integration_helpers import hist_counts, run_ids, run_row
from script_loader import load_script
from torch import nn

import gradscope
from gradscope.api.distributed import kind_of
from gradscope.api.watch import find_layers
from gradscope.runner.gradient_stats import BLOCK_STEPS
from gradscope.vocab.fields import GRAD_STAT_FIELDS

ROOT = Path(__file__).resolve().parent.parent
COMPARED = (*GRAD_STAT_FIELDS, "act_mean", "act_std")


def example_module():  # noqa: ANN201 - the example script, imported for its model and data
    return load_script(ROOT / "examples" / "fsdp_one_run.py")


def recorded(db: Path, run_id: str) -> dict[tuple[int, str], dict[str, object]]:
    cols = ", ".join(f"s.{f}" for f in COMPARED)
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            f"SELECT s.epoch, l.name, {cols}, s.grad_hist FROM layer_stats s JOIN run_layers l "
            "ON l.run_id = s.run_id AND l.layer = s.layer WHERE s.run_id = ? ORDER BY 1, 2",
            (run_id,),
        ).fetchall()
    return {
        (r[0], r[1]): {**dict(zip(COMPARED, r[2:-1], strict=True)), "hist": r[-1]} for r in rows
    }


@pytest.mark.slow
def test_a_two_process_fsdp2_job_is_one_run_equal_to_a_single_process(db_path: Path) -> None:
    out = db_path.parent / "fsdp.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "fsdp_one_run.py"), "--db", str(db_path)]
        + ["--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(out.read_text())
    (run_id,) = run_ids(db_path, "fsdp")  # one run for the job, not one per rank
    assert run_id == found["run_id"]
    row = run_row(db_path, run_id)
    assert (row["status"], row["epochs_done"]) == ("completed", 2)
    assert json.loads(row["config"])["user"]["distributed"] == {
        "rank": 0,
        "world_size": 2,
        "backend": "gloo",
        "recorded_by": "rank 0",
    }
    # The collectives gradscope took part in, on its measuring thread: per epoch of 20 steps,
    # one all_gather per block of 16 steps (a full one and the partial rest) and one
    # all_reduce at the close; not one per layer (4 layers) or per step (40 steps).
    ex = example_module()
    blocks = -(-ex.STEPS // BLOCK_STEPS)
    assert found["collectives"] == (["all_gather"] * blocks + ["all_reduce"]) * 2
    assert found["setup_collectives"] == 2  # at watch(): same model? and the shard sizes
    # The reference: one process, the whole batch each step, the same probe.
    model = ex.make_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=ex.LR)
    with gradscope.init(db=str(db_path), name="single", quiet=True) as run:
        run.watch(model, optimizer, probe=ex.probe())
        for _ in range(2):
            for x, y in ex.batches():
                optimizer.zero_grad()
                loss = nn.functional.mse_loss(model(x), y)
                loss.backward()
                optimizer.step()
            run.log_epoch(train_loss=loss)
    with sqlite3.connect(db_path) as conn:
        layers = conn.execute(
            "SELECT name, kind, shape FROM run_layers WHERE run_id = ? ORDER BY layer", (run_id,)
        ).fetchall()
    # The model's own names and classes: no `_fsdp_wrapped_module`, `_flat_param`, FSDPLinear.
    assert layers == [
        ("0", "Linear", "[16, 5]"),
        ("2", "Linear", "[3, 16]"),
        ("4", "Linear", "[16, 3]"),
        ("6", "Linear", "[1, 16]"),
    ]
    sharded, single = recorded(db_path, run_id), recorded(db_path, run.id)
    assert sharded.keys() == single.keys() and len(sharded) == 2 * 4
    worst = dict.fromkeys(COMPARED, 0.0)
    for key, values in sharded.items():
        for field in COMPARED:
            x, y = values[field], single[key][field]
            assert x is not None and y is not None, (key, field)
            worst[field] = max(worst[field], abs(x - y) / max(abs(y), 1e-12))
        # The last step's histogram: equal counts, or a value or two across a bin edge (the
        # sharded gradient is averaged over the ranks' halves: ~1e-7 apart).
        a, b = hist_counts(values["hist"]), hist_counts(single[key]["hist"])
        assert np.abs(a - b).sum() <= 2, (key, a, b)
    print("largest relative difference per statistic:", worst)
    assert all(v <= 1e-5 for v in worst.values()), worst
    # Every layer's histogram counts each of its elements once (the padding of the uneven
    # shards taken out of the zero count).
    for (_, name), values in sharded.items():
        shape = json.loads(next(s for n, _, s in layers if n == name))
        assert hist_counts(values["hist"]).sum() == int(np.prod(shape)), name


def test_fsdp1_is_refused_and_fsdp2_classes_keep_their_names(db_path: Path, tmp_path: Path) -> None:
    import torch.distributed as dist
    from torch.distributed.fsdp import FullyShardedDataParallel, fully_shard

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
        # FSDP1 cannot be built on a CPU ("needs a non-CPU accelerator"): its class, around a
        # plain module, is what watch() looks for.
        wrapped = FullyShardedDataParallel.__new__(FullyShardedDataParallel)
        nn.Module.__init__(wrapped)
        wrapped._modules["_fsdp_wrapped_module"] = model
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        run = gradscope.init(db=str(db_path), name="fsdp1", quiet=True)
        with pytest.raises(NotImplementedError, match="FullyShardedDataParallel"):
            run.watch(wrapped, optimizer)
        run.finish()
        other = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
        fully_shard(other[0])
        fully_shard(other)
        assert type(other[0]).__name__ == "FSDPLinear"
        assert kind_of(other[0]) == "Linear" and kind_of(nn.Tanh()) == "Tanh"
        assert [(la.info.name, la.info.kind) for la in find_layers(other)] == [
            ("0", "Linear"),
            ("2", "Linear"),
        ]
    finally:
        dist.destroy_process_group()
