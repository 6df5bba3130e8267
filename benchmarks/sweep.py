"""Fast sweeps: a sweep trained as batched ensembles against the same runs one at a time.

The sweep of issue 6: arch {sigmoid, relu, resnet} x 16 seeds, depth 10, width 32, moons (2048
samples), 20 epochs, the default optimizer (Adam, lr 1e-3, batch 64), one thread. Prints the
whole sweep's wall time both ways, the ratio and models per second, then the gain by group size
(K = 4, 16, 64 seeds of one architecture against the one-at-a-time time per model).

Both sides record every epoch of every run, and both train on the engine (one at a time is a
group of one, as `--no-batch` trains). By default into memory: recorders keep each EpochRecord,
so measuring and building the records is paid on both sides but no database is involved. With
--sqlite both go through a real SQLite EpochWriter (execute_run against execute_group), as a
worker would. The machine may be shared: the CPU-time ratio (this process
only) is printed as well, with the load average.

With --end-to-end, the yardstick users know, in fresh processes (paired rounds, medians): the
same 48 runs queued by `gradscope sweep` and drained by `gradscope worker --exit-when-idle`
(recording everything into SQLite), with --batch and with --no-batch, against
benchmarks/bare_sweep.py, a plain PyTorch script training them one after another and recording
nothing. Targets (issue 25): bare / batched >= 8x; --no-batch / batched >= 2.5x (on --issue25's
24 runs). `--sizes ''` skips the table by group size.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sweep.py [--sqlite] [--quick]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sweep.py --end-to-end [--rounds 3]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sweep.py --peak [--sizes 1,4,16,64]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sweep.py --issue25 [--end-to-end] [--rounds 5]

With --issue25, issue 25's own case: 3 archs x 8 seeds, depth 10, width 32, moons, 10 epochs,
Adam (3 groups of 8), batched against `--no-batch`. In process: paired rounds in one warm
process, the worker's two paths (`execute_group` against `execute_run`, into SQLite), medians,
spread and the CPU-time ratio; target >= 3x. With --end-to-end as well: the same two sides as
fresh processes (target >= 2.5x), and the plain script beside them.

With --peak (issue 25, item 1), the engine's distance to the machine's limit: per group size K,
the floating-point rate of a group's training steps (the multiply-adds of forward and backward,
counted from the shapes; the epoch's step loop timed as a whole, so the optimizer, the gradient
probe and the loss count as time, not as work) as a fraction of this core's `torch.mm` peak on
one square matrix product of the same total work per step (one thread, medians of this thread's
CPU time, so other processes on a shared machine do not count); then where a K = 16 group's step
loop goes, per architecture (torch.profiler, shares of self CPU time by operator).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# The repository root first: the benchmark runs from a checkout.
ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)

import torch  # noqa: E402

from gradscope.db.engine import make_engine  # noqa: E402
from gradscope.db.epoch_writes import EpochWriter  # noqa: E402
from gradscope.runner.batched import train_group  # noqa: E402
from gradscope.runner.execute import execute_group, execute_run  # noqa: E402
from gradscope.vocab.config import RunConfig, make_config  # noqa: E402
from gradscope.vocab.grouping import plan_groups  # noqa: E402
from gradscope.vocab.records import EpochRecord, LayerInfo, RunSpec  # noqa: E402

ARCHS = ("sigmoid", "relu", "resnet")


class MemoryRecorder:
    """Keeps what a run records, as a list would in a test; no database."""

    def __init__(self) -> None:
        self.records: list[EpochRecord] = []

    def start(self, layers: list[LayerInfo], points: tuple[int, bytes] | None, device: str) -> None:
        self.layers, self.points = layers, points

    def epoch(self, record: EpochRecord) -> bool:
        self.records.append(record)
        return False


class Timer:
    """Wall and this process's CPU time of a block."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


class Runner:
    """Trains configs one at a time or as groups, recording to memory or to SQLite."""

    def __init__(self, sqlite_dir: Path | None) -> None:
        self.store = EpochWriter(make_engine(str(sqlite_dir / "bench.db"))) if sqlite_dir else None

    def solo(self, cfg: RunConfig) -> str:
        if self.store is None:  # a solo run on the engine, as `--no-batch` trains it
            return train_group([cfg], [MemoryRecorder()])[0].status
        run_id = self.store.create_run(RunSpec(cfg.model_dump()), status="running")
        return execute_run(self.store, run_id, cfg).status

    def group(self, cfgs: list[RunConfig]) -> list[str]:
        if self.store is None:
            return [r.status for r in train_group(cfgs, [MemoryRecorder() for _ in cfgs])]
        specs = [
            RunSpec(c.model_dump(), group_id="bench", group_index=i) for i, c in enumerate(cfgs)
        ]
        ids = self.store.create_runs(specs, status="running")
        return [r.status for r in execute_group(self.store, ids, cfgs)]


def sweep_configs(
    args: argparse.Namespace, archs: tuple[str, ...], seeds: range
) -> list[RunConfig]:
    return [
        make_config(
            {
                "arch": arch,
                "depth": args.depth,
                "width": args.width,
                "samples": args.samples,
                "epochs": args.epochs,
                "seed": seed,
                "device": args.device,
            }
        )
        for arch in archs
        for seed in seeds
    ]


def timed(work: Callable[[], object]) -> Timer:
    with Timer() as t:
        work()
    return t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--depth", type=int, default=10)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--samples", type=int, default=2048)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--group-size", type=int, default=32)
    parser.add_argument("--sizes", default="4,16,64", help="group sizes for the K table")
    parser.add_argument("--sqlite", action="store_true", help="record through SQLite")
    parser.add_argument("--quick", action="store_true", help="5 epochs, sizes 4,16")
    parser.add_argument("--end-to-end", action="store_true", help="whole processes, see above")
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds (--end-to-end)")
    parser.add_argument("--peak", action="store_true", help="fraction of the core's mm peak")
    parser.add_argument(
        "--issue25", action="store_true", help="3 archs x 8 seeds, 10 epochs; see above"
    )
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.sizes = 5, "4,16"
    if args.issue25:
        args.seeds, args.epochs = 8, 10
    if args.end_to_end:
        end_to_end(args)
        return
    if args.issue25:
        torch.set_num_threads(1)
        with tempfile.TemporaryDirectory() as tmp:
            in_process(args, Runner(Path(tmp)))
        return
    if args.peak:
        torch.set_num_threads(1)
        distance_to_peak(args)
        return
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        run(args, Runner(Path(tmp) if args.sqlite else None))


def end_to_end(args: argparse.Namespace) -> None:
    """`gradscope sweep` + `gradscope worker --exit-when-idle` (batched and not) against the
    plain script, each a fresh process, in rotating order; medians of paired ratios, and the
    ratios of the child processes' CPU time (what a busy second core does not change)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    gradscope = [sys.executable, "-P", "-m", "gradscope.cli"]
    grid = ["--arch", ",".join(ARCHS), "--seed", ",".join(str(s) for s in range(args.seeds))]
    grid += ["--depth", str(args.depth), "--width", str(args.width), "--epochs", str(args.epochs)]
    grid += ["--samples", str(args.samples), "--device", args.device]

    def children_cpu() -> float:
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    def wall(*commands: list[str]) -> tuple[float, float]:
        started, cpu = time.perf_counter(), children_cpu()
        for command in commands:
            subprocess.run(command, check=True, capture_output=True, env=env, cwd=ROOT)
        return time.perf_counter() - started, children_cpu() - cpu

    def ours(tmp: str, name: str, batch: str) -> tuple[float, float]:
        db = ["--db", str(Path(tmp) / f"{name}.db")]
        drain = [*gradscope, "worker", *db, "--exit-when-idle"]
        return wall([*gradscope, "sweep", *db, batch, *grid], drain)

    bare = [sys.executable, "-P", str(ROOT / "benchmarks" / "bare_sweep.py")]
    bare += ["--seeds", str(args.seeds), "--epochs", str(args.epochs)]
    sides = ("batched", "no-batch", "bare")
    times: dict[str, list[float]] = {side: [] for side in sides}
    cpus: dict[str, list[float]] = {side: [] for side in sides}
    print(
        f"end to end: {len(ARCHS)} archs x {args.seeds} seeds, depth {args.depth}, width "
        f"{args.width}, {args.epochs} epochs; load average before {os.getloadavg()[0]:.2f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.rounds):
            for side in sides[i % 3 :] + sides[: i % 3]:
                if side == "bare":
                    spent, cpu = wall(bare)
                else:
                    flag = "--batch" if side == "batched" else "--no-batch"
                    spent, cpu = ours(tmp, f"{side}{i}", flag)
                times[side].append(spent)
                cpus[side].append(cpu)
                print(f"  round {i}: {side} {spent:.2f} s (CPU {cpu:.2f} s)", flush=True)
    for side in sides:
        values = times[side]
        print(
            f"  {side:<9} median {statistics.median(values):7.2f} s  "
            f"({min(values):.2f}-{max(values):.2f}), CPU {statistics.median(cpus[side]):.2f} s"
        )

    def ratio(slow: str, fast: str) -> str:
        pairs = sorted(s / f for s, f in zip(times[slow], times[fast], strict=True))
        cpu = statistics.median(s / f for s, f in zip(cpus[slow], cpus[fast], strict=True))
        return (
            f"{statistics.median(pairs):.2f}x (pairs {pairs[0]:.2f}-{pairs[-1]:.2f}; "
            f"CPU time {cpu:.2f}x)"
        )

    print(f"bare script / gradscope batched: {ratio('bare', 'batched')}  [target >= 8x, 48 runs]")
    print(f"--no-batch / batched:            {ratio('no-batch', 'batched')}  [target >= 2.5x]")
    print(f"bare script / --no-batch:        {ratio('bare', 'no-batch')}")
    print(f"load average after: {os.getloadavg()[0]:.2f} (medians of {args.rounds} paired rounds)")


def in_process(args: argparse.Namespace, runner: Runner) -> None:
    """The sweep's runs as `gradscope worker` trains them, in one warm process: every run
    alone (`execute_run`, what `--no-batch` claims) against the planned groups
    (`execute_group`), both into SQLite; paired rounds in alternating order."""
    warm = sweep_configs(argparse.Namespace(**{**vars(args), "epochs": 1}), ARCHS[:1], range(2))
    runner.solo(warm[0])
    runner.group(warm)
    cfgs = sweep_configs(args, ARCHS, range(args.seeds))
    groups = plan_groups(cfgs, args.group_size)
    print(
        f"in process: {len(cfgs)} runs ({len(ARCHS)} archs x {args.seeds} seeds), depth "
        f"{args.depth}, width {args.width}, {args.epochs} epochs, groups of "
        f"{', '.join(str(len(g)) for g in groups)}, SQLite; load average "
        f"{os.getloadavg()[0]:.2f}"
    )

    def alone() -> None:
        for cfg in cfgs:
            runner.solo(cfg)

    def grouped() -> None:
        for g in groups:
            runner.group([cfgs[i] for i in g])

    sides = {"no-batch": alone, "batched": grouped}
    walls: dict[str, list[float]] = {side: [] for side in sides}
    cpus: dict[str, list[float]] = {side: [] for side in sides}
    for i in range(args.rounds):
        for side in list(sides)[i % 2 :] + list(sides)[: i % 2]:
            t = timed(sides[side])
            walls[side].append(t.wall)
            cpus[side].append(t.cpu)
            print(f"  round {i}: {side} {t.wall:.2f} s (CPU {t.cpu:.2f} s)", flush=True)
    pairs = sorted(s / b for s, b in zip(walls["no-batch"], walls["batched"], strict=True))
    cpu = statistics.median(s / b for s, b in zip(cpus["no-batch"], cpus["batched"], strict=True))
    for side in sides:
        print(
            f"  {side:<9} median {statistics.median(walls[side]):6.2f} s "
            f"({min(walls[side]):.2f}-{max(walls[side]):.2f})"
        )
    print(
        f"--no-batch / batched in process: {statistics.median(pairs):.2f}x (pairs "
        f"{pairs[0]:.2f}-{pairs[-1]:.2f}; CPU time {cpu:.2f}x)  [target >= 3x]; load average "
        f"after {os.getloadavg()[0]:.2f}, {args.rounds} paired rounds"
    )


def run(args: argparse.Namespace, runner: Runner) -> None:
    # Warm-up: imports (scikit-learn, the optimizer's) are paid once, outside the timings.
    warm = sweep_configs(argparse.Namespace(**{**vars(args), "epochs": 1}), ARCHS[:1], range(2))
    runner.solo(warm[0])
    runner.group(warm)

    cfgs = sweep_configs(args, ARCHS, range(args.seeds))
    groups = plan_groups(cfgs, args.group_size)
    recording = "SQLite" if runner.store is not None else "memory"
    print(
        f"sweep: {len(cfgs)} runs ({len(ARCHS)} archs x {args.seeds} seeds), depth {args.depth}, "
        f"width {args.width}, moons {args.samples} samples, {args.epochs} epochs, "
        f"device {args.device}, {torch.get_num_threads()} thread, recording to {recording}"
    )
    print(f"load average before: {os.getloadavg()[0]:.2f}")
    # Interleaved by architecture, so a change in the machine's load hits both sides alike.
    solo_t = {"wall": 0.0, "cpu": 0.0}
    group_t = {"wall": 0.0, "cpu": 0.0}
    solo_per_model: dict[str, float] = {}
    for arch in ARCHS:
        mine = [c for c in cfgs if c.arch == arch]
        t = timed(lambda mine=mine: [runner.solo(c) for c in mine])
        solo_t["wall"] += t.wall
        solo_t["cpu"] += t.cpu
        solo_per_model[arch] = t.wall / len(mine)
        for g in groups:
            if cfgs[g[0]].arch == arch:
                t = timed(lambda g=g: runner.group([cfgs[i] for i in g]))
                group_t["wall"] += t.wall
                group_t["cpu"] += t.cpu
    n = len(cfgs)
    sizes = ", ".join(str(len(g)) for g in groups)
    print(f"one at a time: {solo_t['wall']:7.2f} s  {n / solo_t['wall']:6.2f} models/s")
    print(
        f"batched:       {group_t['wall']:7.2f} s  {n / group_t['wall']:6.2f} models/s  "
        f"({len(groups)} groups: {sizes})"
    )
    print(
        f"ratio: {solo_t['wall'] / group_t['wall']:.2f}x wall "
        f"({solo_t['cpu'] / group_t['cpu']:.2f}x CPU time); target >= 5x, goal 8x"
    )

    if not args.sizes:
        return
    print("\nby group size (K seeds of one arch batched, against one at a time per model):")
    print(f"{'K':>4}  " + "  ".join(f"{a:>14}" for a in ARCHS) + f"  {'all models/s':>12}  ratio")
    for k in [int(s) for s in args.sizes.split(",")]:
        cells, models, wall, solo_wall = [], 0, 0.0, 0.0
        for arch in ARCHS:
            members = sweep_configs(args, (arch,), range(100, 100 + k))
            t = timed(lambda members=members: runner.group(members))
            ratio = solo_per_model[arch] * k / t.wall
            cells.append(f"{t.wall / k * 1e3:6.1f} ms {ratio:4.1f}x")
            models += k
            wall += t.wall
            solo_wall += solo_per_model[arch] * k
        print(
            f"{k:>4}  "
            + "  ".join(f"{c:>14}" for c in cells)
            + f"  {models / wall:12.2f}  {solo_wall / wall:.2f}x"
        )
    print(
        f"(cells: batched time per model and ratio); load average after: {os.getloadavg()[0]:.2f}"
    )


def step_flops(cfg: RunConfig, features: int = 2) -> float:
    """Floating-point operations of one training step of one member (batch of cfg.batch_size):
    2 per multiply-add; forward x @ W per layer, backward dW = dz^T @ x per layer and
    dx = dz @ W for every layer but the first. Elementwise work is not counted."""
    w, b = cfg.width, cfg.batch_size
    shapes = [(features, w)] + [(w, w)] * (cfg.depth - 1) + [(w, 1)]
    forward = sum(2 * b * i * o for i, o in shapes)
    grad_w = forward
    grad_x = forward - 2 * b * features * w
    return float(forward + grad_w + grad_x)


def mm_peak(flops: float, repeats: int = 200) -> tuple[float, int]:
    """This core's torch.mm rate (FLOP/s, median of `repeats`, this thread's CPU time) on one
    n x n product whose 2n^3 operations equal `flops`, and n."""
    n = max(8, round((flops / 2) ** (1 / 3)))
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    for _ in range(10):
        torch.mm(a, b, out=out)
    times = []
    for _ in range(repeats):
        t = time.thread_time()
        torch.mm(a, b, out=out)
        times.append(time.thread_time() - t)
    return 2 * n**3 / statistics.median(times), n


def distance_to_peak(args: argparse.Namespace) -> None:
    """Per K: the step loop's achieved rate against the mm peak at the same work (CPU time
    of this one thread, so a busy machine's other processes are not counted); then where a
    K = 16 group's step loop goes, by operator (torch.profiler, self CPU time)."""
    from torch.profiler import ProfilerActivity, profile

    from gradscope.runner import batched

    spent: list[float] = []
    plain_epoch = batched._GroupTraining._train_epoch
    profiles: list[dict[str, float]] = []
    profiling = False

    def timed_epoch(self: batched._GroupTraining, epoch: int) -> bool:
        if profiling:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                stopped = plain_epoch(self, epoch)
            profiles.append({e.key: e.self_cpu_time_total for e in prof.key_averages()})
            return stopped
        t = time.thread_time()
        try:
            return plain_epoch(self, epoch)
        finally:
            spent.append(time.thread_time() - t)

    batched._GroupTraining._train_epoch = timed_epoch  # type: ignore[method-assign]
    warm = sweep_configs(argparse.Namespace(**{**vars(args), "epochs": 1}), ARCHS[:1], range(2))
    train_group(warm, [MemoryRecorder() for _ in warm])
    cfg = sweep_configs(args, ARCHS[:1], range(1))[0]
    steps = -(-round(cfg.samples * (1 - cfg.test_fraction)) // cfg.batch_size)
    print(
        f"depth {args.depth}, width {args.width}, batch {cfg.batch_size}, {steps} steps per "
        f"epoch, {args.epochs} epochs, one thread (CPU time); load average "
        f"{os.getloadavg()[0]:.2f}"
    )
    print(
        f"{'K':>4} {'arch':>8} {'step ms':>8} {'GFLOP/s':>8} {'mm peak':>8} {'n':>4} "
        f"{'fraction':>8}"
    )
    for k in [int(s) for s in args.sizes.split(",")]:
        for arch in ARCHS:
            members = sweep_configs(args, (arch,), range(100, 100 + k))
            spent.clear()
            train_group(members, [MemoryRecorder() for _ in members])
            per_step = statistics.median(spent) / steps
            flops = step_flops(members[0]) * k
            peak, n = mm_peak(flops)
            rate = flops / per_step
            print(
                f"{k:>4} {arch:>8} {per_step * 1e3:8.3f} {rate / 1e9:8.2f} {peak / 1e9:8.2f} "
                f"{n:>4} {rate / peak:8.1%}",
                flush=True,
            )
    profiling = True
    short = argparse.Namespace(**{**vars(args), "epochs": 3})
    for arch in ARCHS:
        profiles.clear()
        members = sweep_configs(short, (arch,), range(100, 116))
        train_group(members, [MemoryRecorder() for _ in members])
        totals: dict[str, float] = {}
        for one in profiles:
            for key, us in one.items():
                totals[key] = totals.get(key, 0.0) + us
        whole = sum(totals.values())
        top = sorted(totals.items(), key=lambda kv: kv[1], reverse=True)[:8]
        shares = ", ".join(f"{key.removeprefix('aten::')} {us / whole:.0%}" for key, us in top)
        print(f"K = 16 {arch} step loop by operator (self CPU): {shares}")
    batched._GroupTraining._train_epoch = plain_epoch  # type: ignore[method-assign]
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
