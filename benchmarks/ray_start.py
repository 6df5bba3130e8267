"""How fast `gradscope worker --ray local` drains a small sweep, against a plain worker.

Issue 25's case: the 12-run sweep arch {sigmoid, relu, resnet} x 4 seeds, depth 10, width 32,
moons, 10 epochs, Adam, queued by `gradscope sweep` (3 batched groups of 4), then drained by one
fresh `gradscope worker --concurrency 2 --exit-when-idle` process, timed from its start to its
exit (Ray's start and shutdown included):

- plain: no Ray (one process imports torch and forks two training processes);
- ray cold: `--ray local` with no Ray instance running: it starts a private one and stops it;
- ray warm: `--ray local` while a Ray instance already runs on this machine (the benchmark
  starts one with `ray start --head` and points RAY_ADDRESS at it): the driver reuses it.

Paired rounds in rotating order, a fresh database each; prints each side's median and spread
and the median of the paired ratios Ray / plain (target <= 2).

With --phases, where a cold start's time goes, in a fresh process per round: `import ray`, the
private instance's start (ray.init), two actors' first answer, the training engine's imports in
them (torch, in parallel), and the shutdown.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ray_start.py [--rounds 5] [--no-warm]
    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ray_start.py --phases [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ARCHS = ("sigmoid", "relu", "resnet")
SWEEP = ["--arch", ",".join(ARCHS), "--seed", "0,1,2,3", "--depth", "10", "--width", "32"]
SWEEP += ["--dataset", "moons", "--epochs", "10", "--optimizer", "adam", "--device", "cpu"]
GRADSCOPE = [sys.executable, "-c", "from gradscope.cli import main; main()"]


def _env(**extra: str) -> dict[str, str]:
    # The user's own Ray settings stay out of it: every side starts from the same place.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def drain(db: Path, ray: bool, env: dict[str, str]) -> float:
    """Seconds from the worker command's start to its exit, the sweep queued before."""
    subprocess.run([*GRADSCOPE, "sweep", "--db", str(db), *SWEEP], check=True,
                   capture_output=True, env=env, cwd=ROOT)  # fmt: skip
    command = [*GRADSCOPE, "worker", "--db", str(db), "--concurrency", "2", "--exit-when-idle"]
    command += ["--poll", "0.1", *(["--ray", "local"] if ray else [])]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or "worker finished after 12 runs" not in done.stderr:
        raise RuntimeError(f"the worker did not drain the sweep:\n{done.stderr[-3000:]}")
    return elapsed


class WarmInstance:
    """A Ray instance already running on this machine, as `ray start --head` leaves one: in
    its own temp dir and session (stopped by its process group, never `ray stop`), with a
    random token of its own (nothing written to the home folder)."""

    def __init__(self) -> None:
        self.temp_dir = tempfile.mkdtemp(prefix="gs-bench-rh-", dir="/tmp")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
        self.env["RAY_ADDRESS"] = f"127.0.0.1:{port}"
        head = subprocess.Popen(
            [str(Path(sys.executable).with_name("ray")), "start", "--head", f"--port={port}",
             f"--temp-dir={self.temp_dir}", "--num-cpus=2", "--include-dashboard=false",
             "--disable-usage-stats"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
            env=_env(**{k: v for k, v in self.env.items() if k != "RAY_ADDRESS"}),
        )  # fmt: skip
        self.pgid = head.pid
        out, _ = head.communicate(timeout=120)
        if head.returncode != 0:
            self.stop()
            raise RuntimeError(f"ray start failed:\n{out}")

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
            time.sleep(1.0)  # a benchmark's grace period, not synchronisation in a test
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def end_to_end(rounds: int, warm: bool) -> None:
    sides = ["plain", "ray cold", *(["ray warm"] if warm else [])]
    times: dict[str, list[float]] = {side: [] for side in sides}
    print(f"{os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.2f}")
    print("12-run sweep (3 archs x 4 seeds, depth 10, width 32, moons, 10 epochs, Adam), "
          "`worker --concurrency 2 --exit-when-idle`, start to exit:")  # fmt: skip
    instance = WarmInstance() if warm else None
    try:
        with tempfile.TemporaryDirectory(prefix="gs-bench-") as tmp:
            for i in range(rounds):
                for side in sides[i % len(sides) :] + sides[: i % len(sides)]:
                    db = Path(tmp) / f"{side.replace(' ', '-')}{i}.db"
                    env = _env(**instance.env) if side == "ray warm" and instance else _env()
                    times[side].append(drain(db, side != "plain", env))
                    print(f"  round {i}: {side:<8} {times[side][-1]:6.2f} s", flush=True)
    finally:
        if instance is not None:
            instance.stop()
    for side in sides:
        values = times[side]
        print(f"  {side:<8} median {statistics.median(values):6.2f} s, "
              f"{min(values):.2f}-{max(values):.2f} s")  # fmt: skip
    for side in sides[1:]:
        ratios = [r / p for r, p in zip(times[side], times["plain"], strict=True)]
        spread = f"{min(ratios):.2f}-{max(ratios):.2f}x"
        print(f"{side} / plain: median {statistics.median(ratios):.2f}x, {spread} over {rounds} "
              "paired rounds (target <= 2)")  # fmt: skip
    print(f"load average after: {os.getloadavg()[0]:.2f}")


# -- where a cold start goes -------------------------------------------------------------------


class _Probe:
    def ping(self) -> int:
        return os.getpid()

    def load(self) -> None:
        import gradscope.runner.execute  # noqa: F401 - torch and the training engine


def phases_once() -> dict[str, float]:
    """One cold start's phases in this (fresh) process, seconds each."""
    marks: dict[str, float] = {}
    last = time.perf_counter()

    def mark(what: str) -> None:
        nonlocal last
        now = time.perf_counter()
        marks[what] = now - last
        last = now

    import ray

    mark("import ray")
    sys.path.insert(0, str(ROOT))
    from gradscope.runner.ray_workers import _Connection

    mark("import gradscope's driver")
    connection = _Connection(ray, "local", 2.0)
    mark("ray.init (private instance)")
    actors = [ray.remote(_Probe).options(num_cpus=1).remote() for _ in range(2)]
    ray.get([a.ping.remote() for a in actors])
    mark("2 actors: first answer")
    ray.get([a.load.remote() for a in actors])
    mark("2 actors: torch + training engine imported")
    connection.close()
    mark("shutdown")
    return marks


def phases(rounds: int) -> None:
    print(f"{os.cpu_count()} CPUs, load average before {os.getloadavg()[0]:.2f}")
    print("a cold `--ray local` start, phase by phase (fresh process per round), seconds:")
    results: list[dict[str, float]] = []
    for _ in range(rounds):
        done = subprocess.run(
            [sys.executable, __file__, "--phases-once"], capture_output=True, text=True,
            env=_env(), cwd=ROOT, check=True,
        )  # fmt: skip
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    for what in results[0]:
        values = [r.get(what, float("nan")) for r in results]
        print(f"  {what:<55} median {statistics.median(values):5.2f}  "
              f"({', '.join(f'{v:.2f}' for v in values)})")  # fmt: skip
    totals = [sum(r.values()) for r in results]
    print(f"  {'total':<55} median {statistics.median(totals):5.2f}")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--no-warm", action="store_true", help="skip the reused-instance side")
    parser.add_argument("--phases", action="store_true", help="where a cold start's time goes")
    parser.add_argument("--phases-once", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phases_once:
        print(json.dumps(phases_once()))
    elif args.phases:
        phases(args.rounds)
    else:
        end_to_end(args.rounds, warm=not args.no_warm)


if __name__ == "__main__":
    main()
