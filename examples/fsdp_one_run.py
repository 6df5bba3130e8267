"""FSDP2 (`fully_shard`) in 2 CPU processes (gloo), recorded as ONE run: each rank measures its
shard of every gradient, the ranks combine their partial sums in one collective per block of
steps, and rank 0 records the run (rank 1's `gradscope.init()` returns a run that measures and
sends but writes nothing).

    python examples/fsdp_one_run.py --db fsdp.db --epochs 2

The layers keep the model's own names; the run's config keeps {"distributed": {"rank": 0,
"world_size": 2, "backend": "gloo", ...}}. With --out, rank 0 writes the run id, how many
collectives gradscope took part in (wrapped here to count them) and the time they took.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.fsdp import fully_shard

import gradscope

# 20 steps per epoch: one full block of 16 steps and a partial one of 4. The (3, 16) and (1, 16)
# weights shard unevenly over 2 ranks (2 rows and 1; 1 row and none).
WORLD, ROWS, STEPS, LR = 2, 64, 20, 0.1


def make_model() -> nn.Module:
    torch.manual_seed(0)  # every rank starts from the same weights
    return nn.Sequential(
        nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 3), nn.Tanh(), nn.Linear(3, 16), nn.Tanh(),
        nn.Linear(16, 1),
    )  # fmt: skip


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The global batches of one epoch (each split over the ranks)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, ROWS, 5, generator=g)
    return [(x[s], x[s, :, :1] * x[s, :, 1:2]) for s in range(STEPS)]


def probe() -> torch.Tensor:
    return torch.randn(32, 5, generator=torch.Generator().manual_seed(2))


def count_collectives(calls: list[tuple[str, str, float]]) -> None:
    """Wrap torch.distributed's all_gather / all_reduce to note (name, thread, seconds) of each
    call: gradscope's run on its measuring thread, FSDP's on the training thread."""
    for name in ("all_gather", "all_reduce"):
        original: Callable[..., Any] = getattr(dist, name)

        def wrapped(*args: Any, _original: Callable[..., Any] = original, _name: str = name,
                    **kwargs: Any) -> Any:  # fmt: skip
            t0 = time.perf_counter()
            try:
                return _original(*args, **kwargs)
            finally:
                calls.append((_name, threading.current_thread().name, time.perf_counter() - t0))

        setattr(dist, name, wrapped)


def worker(rank: int, db: str, port: int, epochs: int, out: str, watch: bool) -> None:
    # The rendezvous store is served by the launching process (see __main__), not by rank 0.
    store = dist.TCPStore("127.0.0.1", port, is_master=False)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    calls: list[tuple[str, str, float]] = []
    count_collectives(calls)
    model = make_model()
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    with gradscope.init(db=db, name="fsdp", config={"seed": 0}, quiet=True) as run:
        if watch:
            run.watch(model, optimizer, probe=probe())
        setup = len(calls)
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(epochs):
            for x, y in batches():
                part = slice(rank * ROWS // WORLD, (rank + 1) * ROWS // WORLD)
                optimizer.zero_grad()
                loss = nn.functional.mse_loss(model(x[part]), y[part])
                loss.backward()
                optimizer.step()
            run.log_epoch(train_loss=loss)
    seconds = time.perf_counter() - t0  # the run finished: every collective has run
    ours = [c for c in calls[setup:] if c[1].startswith("gradscope")]
    if rank == 0:
        with open(out, "w") as f:
            json.dump(
                {
                    "run_id": run.id,
                    "setup_collectives": setup,
                    "collectives": [c[0] for c in ours],
                    "collective_s": [c[2] for c in ours],
                    "train_s": seconds,
                    "steps": epochs * STEPS,
                },
                f,
            )
        print(f"rank 0 recorded run {run.id}; gradscope's collectives: {len(ours)}")
    # Every rank reaches the end before any tears the group down (see ddp_one_run.py).
    dist.barrier()
    dist.destroy_process_group()


def rendezvous() -> dist.TCPStore:
    """The ranks' rendezvous store, served from the launching process on a free port: it
    outlives every rank. Served by rank 0 (MASTER_ADDR/MASTER_PORT), it went away when rank 0
    exited while rank 1 was still tearing its group down, which could abort rank 1 (gloo:
    "terminate called without an active exception")."""
    return dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)


if __name__ == "__main__":  # spawn re-imports this file in each rank
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="fsdp.db")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the run id and collectives as JSON")
    parser.add_argument("--no-watch", action="store_true", help="train without gradscope")
    a = parser.parse_args()
    out = a.out or os.path.join(os.path.dirname(a.db) or ".", "fsdp.json")
    store = rendezvous()
    args = (a.db, store.port, a.epochs, out, not a.no_watch)
    mp.spawn(worker, args=args, nprocs=WORLD, join=True)
    sys.exit(0)
