"""What does recording cost? Issues 2 and 15; prints ratios (targets: <= 1.05 in training,
<= 1.10 for the whole process).

1. Training: depth 20, width 64, sigmoid, 4096 moons samples, batch 64, SGD, 5 epochs, one
   thread; full recording (statistics + a real SQLite file) against a plain loop of the same
   model and data, alternating over several rounds in fresh processes; median paired ratio.
   A third variant, the solo engine (`train_group` of one, what `execute_run` runs) with a
   recorder that stores nothing, splits the cost between measuring (per-step statistics, the
   end-of-epoch test pass, decision grids) and storing. The plain loop is autograd with
   torch.optim, what a user writes; solo runs train on the hand-written engine, which is faster
   than that loop, so the recorded side can come out below 1.
2. Recording in one process (target <= 1.05): the same engine on the same config, with full
   recording into a real SQLite file (`execute_run`: layers, runtime, every epoch, the final
   status) against a recorder that keeps nothing in memory (`train_group` with a no-op
   recorder: the statistics, test pass and grids are still computed, nothing is stored). Both
   in one warm process, alternating, median of paired ratios: what storing costs, free of
   start-up and of the differences between processes.
3. Whole process: `gradscope train` (imports, database set-up, recording) against a bare PyTorch
   script of the same workload (benchmarks/bare_train.py).

    python benchmarks/overhead.py [--rounds 7] [--in-process-only]
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
WORKLOAD = {
    "arch": "sigmoid",
    "depth": 20,
    "width": 64,
    "samples": 4096,
    "batch_size": 64,
    "optimizer": "sgd",
    "lr": 0.1,
    "epochs": 5,
}


def child(mode: str) -> None:
    """Runs in a fresh process: time one training of the workload, print seconds as JSON."""
    import torch
    from reference_loop import make_optimizer

    from gradscope.runner.datasets import load_dataset
    from gradscope.runner.networks import build_model
    from gradscope.vocab.config import make_config

    torch.set_num_threads(1)
    cfg = make_config(WORKLOAD)
    # Every side times from warm imports (torch._dynamo, which torch.optim imports on first
    # use, for the plain loop); each then loads its own data and builds its own model.
    load_dataset(cfg)
    make_optimizer(cfg, [torch.zeros(1, requires_grad=True)])
    if mode == "measured":
        from gradscope.runner.batched import train_group

        class Discard:
            def start(self, *args: object) -> None: ...

            def epoch(self, record: object) -> bool:
                return False

        started = time.perf_counter()
        train_group([cfg], [Discard()])
        elapsed = time.perf_counter() - started
    elif mode == "recorded":
        from gradscope.db.engine import make_engine
        from gradscope.db.epoch_writes import EpochWriter
        from gradscope.runner.execute import execute_run
        from gradscope.vocab.records import RunSpec

        with tempfile.TemporaryDirectory() as tmp:
            store = EpochWriter(make_engine(str(Path(tmp) / "bench.db")))
            run_id = store.create_run(RunSpec(cfg.model_dump()), status="running")
            started = time.perf_counter()
            execute_run(store, run_id, cfg)
            elapsed = time.perf_counter() - started
    else:
        started = time.perf_counter()
        data = load_dataset(cfg)
        torch.manual_seed(cfg.seed)
        model = build_model(cfg, data.n_features)
        optimizer = make_optimizer(cfg, model.parameters())
        loss_fn = torch.nn.BCEWithLogitsLoss()
        x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
        shuffle = torch.Generator().manual_seed(cfg.seed)
        for _ in range(cfg.epochs):
            for idx in torch.randperm(len(x), generator=shuffle).split(cfg.batch_size):
                optimizer.zero_grad()
                loss_fn(model(x[idx]), y[idx]).backward()
                optimizer.step()
        elapsed = time.perf_counter() - started
    print(json.dumps({"seconds": elapsed}))


def in_process(rounds: int) -> None:
    """Part 2: recorded (SQLite) vs no-op recorder, the same engine, one process."""
    import torch

    from gradscope.db.engine import make_engine
    from gradscope.db.epoch_writes import EpochWriter
    from gradscope.runner.batched import train_group
    from gradscope.runner.execute import execute_run, warm_up
    from gradscope.vocab.config import make_config
    from gradscope.vocab.records import RunSpec

    class Discard:
        def start(self, *args: object) -> None: ...

        def epoch(self, record: object) -> bool:
            return False

    warm_up()
    torch.set_num_threads(1)
    cfg = make_config(WORKLOAD)
    noop, stored = [], []
    with tempfile.TemporaryDirectory() as tmp:
        store = EpochWriter(make_engine(str(Path(tmp) / "bench.db")))
        run_id = store.create_run(RunSpec(cfg.model_dump()), status="running")
        execute_run(store, run_id, cfg)  # warm: the database file, SQLAlchemy's caches
        for i in range(rounds):
            for side in ("noop", "stored") if i % 2 == 0 else ("stored", "noop"):
                if side == "stored":
                    run_id = store.create_run(RunSpec(cfg.model_dump()), status="running")
                    started = time.perf_counter()
                    execute_run(store, run_id, cfg)
                    stored.append(time.perf_counter() - started)
                else:
                    started = time.perf_counter()
                    train_group([cfg], [Discard()])
                    noop.append(time.perf_counter() - started)
        store.engine.dispose()
    ratios = [s / n for s, n in zip(stored, noop, strict=True)]
    print(
        f"recording in one process: SQLite {statistics.median(stored):.3f} s, no-op recorder "
        f"{statistics.median(noop):.3f} s; recorded / no-op, median of {rounds} paired rounds: "
        f"{statistics.median(ratios):.3f}   [target <= 1.05]  (load {os.getloadavg()[0]:.1f})"
    )


def run_child(mode: str) -> float:
    out = subprocess.run(
        [sys.executable, "-P", __file__, "--child", mode],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])["seconds"]


def wall(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--child", choices=("recorded", "measured", "plain"))
    parser.add_argument("--in-process-only", action="store_true", help="only part 2")
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    if args.in_process_only:
        in_process(args.rounds)
        return

    modes = ("recorded", "measured", "plain")
    times: dict[str, list[float]] = {m: [] for m in modes}
    for i in range(args.rounds):
        # Rotate the order so drift on the machine doesn't favour one side.
        for mode in modes[i % 3 :] + modes[: i % 3]:
            times[mode].append(run_child(mode))
    plain = times["plain"]
    medians = ", ".join(f"{m} {statistics.median(times[m]):.3f}" for m in modes)
    print(f"training seconds, median: {medians}")
    for mode, what in (
        ("measured", "statistics, test pass and grids, nothing stored"),
        ("recorded", "full recording into SQLite"),
    ):
        ratios = [t / p for t, p in zip(times[mode], plain, strict=True)]
        print(
            f"{mode} / plain ({what}), median of {args.rounds} paired rounds: "
            f"{statistics.median(ratios):.3f}"
        )
    in_process(args.rounds)

    gradscope = str(Path(sys.executable).with_name("gradscope"))
    whole_ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        options = [f"--{k.replace('_', '-')}={v}" for k, v in WORKLOAD.items()]
        for i in range(args.rounds):
            db = str(Path(tmp) / f"w{i}.db")
            ours = wall([gradscope, "train", "--quiet", "--db", db, *options])
            # -P: the bare script sees nothing of this folder, as a user's script would.
            bare = wall([sys.executable, "-P", str(HERE / "bare_train.py")])
            whole_ratios.append(ours / bare)
    print(
        f"whole process: gradscope train / bare PyTorch script, median of {args.rounds}: "
        f"{statistics.median(whole_ratios):.3f}   [target <= 1.10]"
    )


if __name__ == "__main__":
    main()
