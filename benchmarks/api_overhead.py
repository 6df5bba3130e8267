"""What does `run.watch` cost a user's own loop? Issue 12's benchmark; prints ratios.

(a) The 20-layer sigmoid MLP of benchmarks/overhead.py (depth 20, width 64, 4096 moons samples,
    batch 64, SGD, 5 epochs, one thread), written as a plain loop; target <= 1.10x.
(b) A small CNN (examples/own_loop_cnn.py: two convolutions, a batch norm, a linear head) on
    12x12 synthetic images, batch 32, Adam, 5 epochs.
Each round runs the plain loop and the same loop with run.watch + run.log_epoch + finish (into
a real SQLite file) in fresh processes, in alternating order; the ratio is the median over
paired rounds. gradscope.init and run.watch (creating the database and the run) are a
once-per-run cost, timed apart. A third, in-process pass says where the time goes: the step
pre-hook on the training thread, log_epoch on the training thread, and finish() (waiting for
the measuring thread's last epoch and the final database write).

With --noise each round also runs the plain loop a second time: the plain / plain ratios show
how far two identical processes differ on this machine (on a shared 2-core VM, single pairs
differ by up to +-10%), the yardstick for reading the watched / plain median.

    python benchmarks/api_overhead.py [--rounds 7] [--only mlp|cnn] [--noise]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# The repository root first: the benchmark runs from a checkout.
sys.path[0] = str(HERE.parent)
EPOCHS = 5


def workload(name: str):  # noqa: ANN201 - (model, optimizer, batches, loss_fn, probe)
    import torch

    if name == "mlp":
        from gradscope.runner.datasets import load_dataset
        from gradscope.runner.networks import build_model
        from gradscope.vocab.config import make_config

        cfg = make_config(
            {"arch": "sigmoid", "depth": 20, "width": 64, "samples": 4096, "batch_size": 64}
        )
        data = load_dataset(cfg)
        torch.manual_seed(0)
        model = build_model(cfg, data.n_features)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
        return model, optimizer, x, y, 64, torch.nn.BCEWithLogitsLoss()
    sys.path.insert(0, str(HERE.parent / "examples"))
    from own_loop_cnn import bars, build

    torch.manual_seed(0)
    x, y = bars(1024, 0)
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    return model, optimizer, x, y, 32, torch.nn.CrossEntropyLoss()


def child(name: str, mode: str) -> None:
    """In a fresh process: time the loop, print {"seconds": ...} (and a breakdown)."""
    import torch

    torch.set_num_threads(1)
    model, optimizer, x, y, batch, loss_fn = workload(name)
    import gradscope  # imported before timing: both sides time the loop only

    tmp = tempfile.TemporaryDirectory()
    hook_s = log_s = 0.0
    setup = time.perf_counter()
    run = None
    if mode != "plain":
        run = gradscope.init(db=str(Path(tmp.name) / "bench.db"), name=f"bench {name}")
        run.watch(model, optimizer)
        if mode == "breakdown":
            watcher = run._watcher  # time the hook itself around the real one
            inner = watcher._pre_step

            def timed(*args: object) -> None:
                nonlocal hook_s
                t = time.perf_counter()
                inner(*args)
                hook_s += time.perf_counter() - t

            watcher._handle.remove()
            watcher._handle = optimizer.register_step_pre_hook(timed)
    # Training is timed from here: creating the database and the run is a once-per-run cost,
    # reported apart (benchmarks/overhead.py likewise creates its run before timing).
    started = time.perf_counter()
    init_s = started - setup
    shuffle = torch.Generator().manual_seed(0)
    steps = 0
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(x), generator=shuffle).split(batch):
            optimizer.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            optimizer.step()
            steps += 1
        if run is not None:
            t = time.perf_counter()
            run.log_epoch()
            log_s += time.perf_counter() - t
    loop_s = time.perf_counter() - started
    finish_s = 0.0
    if run is not None:
        t = time.perf_counter()
        run.finish()
        finish_s = time.perf_counter() - t
    elapsed = time.perf_counter() - started
    print(
        json.dumps(
            {
                "seconds": elapsed,
                "loop": loop_s,
                "steps": steps,
                "hook": hook_s,
                "log_epoch": log_s,
                "finish": finish_s,
                "init": init_s,
            }
        )
    )
    tmp.cleanup()


def run_child(name: str, mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-P", __file__, "--child", name, mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--only", choices=("mlp", "cnn"), help="Run one workload only.")
    parser.add_argument("--noise", action="store_true", help="also time plain against plain")
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "MODE"))
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    for name, what in (("mlp", "(a) 20-layer sigmoid MLP"), ("cnn", "(b) small CNN")):
        if args.only not in (None, name):
            continue
        ratios, plain_s, noise = [], [], []
        sides = ("plain", "watched", "plain again") if args.noise else ("plain", "watched")
        for i in range(args.rounds):
            order = sides if i % 2 == 0 else sides[::-1]
            got = {side: run_child(name, side.split()[0])["seconds"] for side in order}
            ratios.append(got["watched"] / got["plain"])
            plain_s.append(got["plain"])
            if args.noise:
                noise.append(got["plain again"] / got["plain"])
        parts = run_child(name, "breakdown")
        step_ms = 1000 * statistics.median(plain_s) / parts["steps"]
        print(
            f"{what}: watched / plain, median of {args.rounds} paired rounds: "
            f"{statistics.median(ratios):.3f}  (plain {statistics.median(plain_s):.2f} s, "
            f"{step_ms:.2f} ms/step); pairs ranged {min(ratios):.3f}-{max(ratios):.3f}"
        )
        if noise:
            print(
                f"   noise: plain / plain, median {statistics.median(noise):.3f}, pairs ranged "
                f"{min(noise):.3f}-{max(noise):.3f}"
            )
        print(
            f"   where the time goes: step hook {1000 * parts['hook'] / parts['steps']:.3f} "
            f"ms/step on the training thread; log_epoch {1000 * parts['log_epoch'] / EPOCHS:.1f}"
            f" ms/epoch; finish {1000 * parts['finish']:.1f} ms (last epoch + final write); "
            f"once per run, init + watch {1000 * parts['init']:.0f} ms (a new SQLite file)"
        )
    print("   [target for (a): <= 1.10; wandb.watch(log='gradients', log_freq=1): 14.6x]")


if __name__ == "__main__":
    main()
