"""DDP in 2 CPU processes (gloo), recorded as ONE run: rank 0 owns it, rank 1's
`gradscope.init()` returns a run that records nothing (its gradients equal rank 0's after DDP's
all-reduce; this script checks that on every step and prints the largest difference).

    python examples/ddp_one_run.py --db ddp.db --epochs 2

The layers are recorded under the model's own names (no DDP `module.` prefix); the run's config
keeps {"distributed": {"rank": 0, "world_size": 2, "backend": "gloo", ...}}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import gradscope

WORLD, ROWS, STEPS, LR = 2, 64, 4, 0.1  # ROWS split evenly over the ranks at each step


def make_model() -> nn.Module:
    torch.manual_seed(0)  # every rank starts from the same weights (DDP also broadcasts them)
    return nn.Sequential(
        nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)
    )


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The global batches of one epoch (each split over the ranks)."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, ROWS, 5, generator=g)
    return [(x[s], x[s, :, :1] * x[s, :, 1:2]) for s in range(STEPS)]


def worker(rank: int, db: str, port: int, epochs: int, out: str) -> None:
    # The rendezvous store is served by the launching process (see __main__), not by rank 0.
    store = dist.TCPStore("127.0.0.1", port, is_master=False)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    model = make_model()
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=LR)
    spread = 0.0  # the largest difference of a gradient between the ranks
    with gradscope.init(db=db, name="ddp", config={"seed": 0}, quiet=True) as run:
        run.watch(ddp, optimizer)
        for _ in range(epochs):
            for x, y in batches():
                part = slice(rank * ROWS // WORLD, (rank + 1) * ROWS // WORLD)
                optimizer.zero_grad()
                loss = nn.functional.mse_loss(ddp(x[part]), y[part])
                loss.backward()
                flat = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
                every = [torch.empty_like(flat) for _ in range(WORLD)]
                dist.all_gather(every, flat)  # the check only: gradscope adds no collective
                spread = max(spread, max(float((g - flat).abs().max()) for g in every))
                optimizer.step()
            run.log_epoch(train_loss=loss)
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"run_id": run.id, "grad_spread": spread}, f)
        print(
            f"rank 0 recorded run {run.id}; largest gradient difference between ranks {spread:.2e}"
        )
    # Every rank reaches the end before any tears the group down: a rank that destroys its
    # group (and exits) while another is still tearing down can abort that one (gloo).
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
    parser.add_argument("--db", default="ddp.db")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", default=os.devnull, help="write the run id and spread as JSON")
    a = parser.parse_args()
    out = a.out if a.out != os.devnull else os.path.join(os.path.dirname(a.db) or ".", "ddp.json")
    store = rendezvous()
    mp.spawn(worker, args=(a.db, store.port, a.epochs, out), nprocs=WORLD, join=True)
    sys.exit(0)
