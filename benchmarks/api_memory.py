"""Extra resident memory of `run.watch` per watched parameter: a >= 25M-parameter model on the CPU.

Each measurement is a fresh process that builds the model, trains a few epochs (a few steps
each, so every epoch end and its statistics are inside the measurement) either bare or watched,
and reports its peak resident set size (`ru_maxrss`). Two figures per round (the processes of a
round run back to back, order alternating between rounds):
- watch alone: (peak watched - peak of the same loop with gradscope.init/log_epoch but no watch)
  / parameters: what watching costs per parameter;
- of which, at the end of the run (RSS then, not the peak), anonymous memory per parameter and
  file-backed memory in MB: watching has a fixed cost that does not grow with the model, mostly
  the code pages of the statistics' kernels that the bare loop never runs (libtorch mapped in);
  the anonymous part is the per-parameter buffers (at this size, by default, the rowless
  layout's one float32 copy, the epoch's start weights: 4 bytes) plus small objects;
- all of gradscope: (peak watched - peak bare) / parameters, which adds gradscope's fixed cost
  (its imports and database engine, spread over this model's parameters).
--compare adds the ring row asked for (watch(low_memory=False): the last step's gradient copied
for the measuring thread to reduce, 4 bytes per weight more, less work on the training thread)
and the layout before the lean mode. Each process also times its training loop: the ratio to
the init'd loop's time of the same round says what each layout costs in time (a few steps: a
rough figure).
wandb.watch (offline, log="all", log_freq=1) is measured beside it when installed (vs bare).

    .venv/bin/python benchmarks/api_memory.py [--rounds 5] [--width 4096] [--compare]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EPOCHS, STEPS, BATCH = 3, 4, 16


def build(width: int):  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    torch.manual_seed(0)
    # 512 -> w -> w -> w/2 -> 10 (w = 4096: 2.1M + 16.8M + 8.4M + 20k = 27.3M parameters)
    return nn.Sequential(
        nn.Linear(512, width),
        nn.ReLU(),
        nn.Linear(width, width),
        nn.ReLU(),
        nn.Linear(width, width // 2),
        nn.ReLU(),
        nn.Linear(width // 2, 10),
    )


def child(mode: str, width: int, db: str) -> None:
    import torch
    from torch import nn

    torch.set_num_threads(1)
    model = build(width)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    x, y = torch.randn(BATCH, 512), torch.randint(0, 10, (BATCH,))
    loss_fn = nn.CrossEntropyLoss()
    run = None
    if mode == "gradscope-two-blocks":  # the layout before the lean mode, for comparison
        import gradscope.runner.gradient_stats as stats

        stats.LEAN_ABOVE = 1 << 62
    if mode.startswith("gradscope") or mode == "init":
        import gradscope

        run = gradscope.init(db=db, name="memory", quiet=True)
        if mode != "init":  # row: the ring row, asked for
            run.watch(model, opt, low_memory=False if mode == "gradscope-row" else None)
    elif mode == "wandb":
        import wandb

        run = wandb.init(mode="offline", dir=str(Path(db).parent), project="memory")
        wandb.watch(model, log="all", log_freq=1)
    began = time.perf_counter()
    for _ in range(EPOCHS):
        for _ in range(STEPS):
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()
            if mode == "wandb":
                run.log({"loss": float(loss)})
        if mode.startswith("gradscope") or mode == "init":
            run.log_epoch(train_loss=loss)
    if run is not None:
        run.finish()
    seconds = time.perf_counter() - began
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    now = {}
    with open("/proc/self/status") as status:  # resident now, by kind (Linux)
        for line in status:
            if line.startswith(("RssAnon:", "RssFile:")):
                now[line[3:7].lower()] = int(line.split()[1]) * 1024
    print(json.dumps({"mode": mode, "params": params, "peak": peak, "seconds": seconds, **now}))


def measure(mode: str, width: int, tmp: str, i: int) -> dict:
    db = os.path.join(tmp, f"m{i}-{mode}-{width}.db")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"}
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--width", str(width), "--db", db],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--width", type=int, default=4096)
    parser.add_argument("--child")
    parser.add_argument(
        "--compare", action="store_true", help="also the ring row and the two-block layout"
    )
    parser.add_argument("--db")
    args = parser.parse_args()
    if args.child:
        child(args.child, args.width, args.db)
        return
    modes = ["gradscope", *(["gradscope-row", "gradscope-two-blocks"] if args.compare else [])]
    try:
        import wandb  # noqa: F401

        modes.append("wandb")
    except ImportError:
        pass
    extra: dict[str, list[float]] = {m: [] for m in modes}
    slower: dict[str, list[float]] = {m: [] for m in modes}
    total: list[float] = []
    anon: list[float] = []
    files: list[float] = []
    params = 0
    with tempfile.TemporaryDirectory(prefix="gradscope-memory-") as tmp:
        for i in range(args.rounds):
            order = ["bare", "init", *modes]
            order = order if i % 2 == 0 else order[::-1]
            peaks = {m: measure(m, args.width, tmp, i) for m in order}
            params = peaks["bare"]["params"]
            for m in modes:
                against = peaks["bare" if m == "wandb" else "init"]
                extra[m].append((peaks[m]["peak"] - against["peak"]) / params)
                slower[m].append(peaks[m]["seconds"] / against["seconds"])
                if m == "gradscope":
                    total.append((peaks[m]["peak"] - peaks["bare"]["peak"]) / params)
                    anon.append((peaks[m]["anon"] - peaks["init"]["anon"]) / params)
                    files.append((peaks[m]["file"] - peaks["init"]["file"]) / 2**20)
    print(
        f"model: {params / 1e6:.1f}M parameters, CPU, {args.rounds} paired rounds (fresh processes)"
    )
    for m, values in extra.items():
        label = {
            "gradscope": "gradscope run.watch alone",
            "gradscope-row": "gradscope run.watch alone, ring row asked for (low_memory=False)",
            "gradscope-two-blocks": "gradscope run.watch alone, lean layout off (before)",
            "wandb": "wandb.watch(log='all', log_freq=1), all of wandb",
        }[m]
        print(f"{label}: extra peak RSS {_spread(values)} bytes/parameter")
        print(f"  training loop time / the unwatched loop's: {_spread(slower[m])}x")
        if m == "gradscope":
            print(f"  at the end: anonymous {_spread(anon)} bytes/parameter,")
            print(f"  file-backed (code pages: a fixed cost) {_spread(files)} MB")
    print(f"all of gradscope (init + watch, vs bare): {_spread(total)} bytes/parameter")


def _spread(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} (median; min {min(values):.2f}, max {max(values):.2f})"


if __name__ == "__main__":
    main()
