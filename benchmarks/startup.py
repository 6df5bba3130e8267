"""How fast does gradscope start? Issue 15's benchmark; prints ratios to `import torch`.

Every figure is a fresh process's wall time (median of --rounds; the machine may be shared, so
medians, and the load average is printed):
1. `python -c "import torch"`, the yardstick.
2. A tiny `gradscope train` (moons, 64 samples, depth 2, one epoch) from launch to exit
   (target <= 2x import torch), and its import profile (`-X importtime`, by top-level package).
3. `gradscope worker` from launch to its first claim of an already queued tiny run, and to that
   run's end.
4. `gradscope dashboard --no-worker` from launch to `/_stcore/health` answering.
5. The classic comparison (sigmoid, relu, resnet; depth 10, width 32, 20 epochs) from being
   queued to three completed runs, with a worker already started on an idle queue (target 4 s).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/startup.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The repository root first: the benchmark runs from a checkout.
sys.path[0] = str(ROOT)
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
GRADSCOPE = [sys.executable, "-P", "-m", "gradscope.cli"]
TINY = ["--samples", "64", "--depth", "2", "--epochs", "1"]
CLASSIC = {"dataset": "moons", "depth": 10, "width": 32, "optimizer": "adam", "lr": 1e-3}


def wall(cmd: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, env=ENV, cwd=ROOT)
    return time.perf_counter() - started


def wait_until(check: Callable[[], bool], timeout_s: float = 120.0, every_s: float = 0.01) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError("gave up waiting")
        time.sleep(every_s)


def statuses(db: Path) -> list[str]:
    with sqlite3.connect(db, timeout=10) as conn:
        return [row[0] for row in conn.execute("select status from runs")]


def queue(db: Path, configs: list[dict[str, object]]) -> None:
    from gradscope.db.engine import make_engine
    from gradscope.db.epoch_writes import EpochWriter
    from gradscope.vocab.config import make_config
    from gradscope.vocab.records import RunSpec

    engine = make_engine(str(db))
    EpochWriter(engine).create_runs([RunSpec(make_config(c).model_dump()) for c in configs])
    engine.dispose()


def stop(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def worker_times(tmp: Path, i: int) -> tuple[float, float]:
    """Launch to first claim and to the run's end, for a tiny run queued before the launch."""
    db = tmp / f"worker{i}.db"
    queue(db, [{"samples": 64, "depth": 2, "epochs": 1}])
    started = time.perf_counter()
    worker = subprocess.Popen(
        [*GRADSCOPE, "worker", "--db", str(db), "--poll", "0.05"],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(lambda: statuses(db) != ["queued"])
        claimed = time.perf_counter() - started
        wait_until(lambda: statuses(db) == ["completed"])
        return claimed, time.perf_counter() - started
    finally:
        stop(worker)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dashboard_time(tmp: Path, i: int) -> float:
    db, port = tmp / f"dash{i}.db", free_port()
    queue(db, [])
    started = time.perf_counter()
    app = subprocess.Popen(
        [*GRADSCOPE, "dashboard", "--db", str(db), "--port", str(port), "--no-worker"],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1):
                return True
        except OSError:
            return False

    try:
        wait_until(healthy, every_s=0.05)
        return time.perf_counter() - started
    finally:
        stop(app)


def classic_time(tmp: Path, i: int) -> float:
    """Queue-to-done of the classic comparison, the worker already started and idle."""
    db = tmp / f"classic{i}.db"
    queue(db, [])
    # The dashboard's worker, as `gradscope dashboard` starts it.
    from gradscope.runner.worker import spawn_worker_process

    log = tmp / f"classic{i}.log"
    worker = spawn_worker_process(str(db), log_path=log)
    try:
        wait_until(lambda: log.exists() and "ready" in log.read_text())
        time.sleep(2.0)  # idle a moment, as a worker behind an open dashboard would be
        started = time.perf_counter()
        queue(db, [{**CLASSIC, "arch": arch} for arch in ("sigmoid", "relu", "resnet")])
        wait_until(lambda: statuses(db) == ["completed"] * 3, every_s=0.02)
        return time.perf_counter() - started
    finally:
        stop(worker)


def import_profile(tmp: Path) -> list[tuple[str, float]]:
    """Self import time by top-level package of one tiny `gradscope train` (-X importtime)."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", *GRADSCOPE[1:], "train", "--quiet"]
        + ["--db", str(tmp / "profile.db"), *TINY],
        capture_output=True,
        text=True,
        env=ENV,
        cwd=ROOT,
        check=True,
    )
    by_package: dict[str, float] = defaultdict(float)
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _cumulative, name = line.removeprefix("import time:").split("|")
        by_package[name.strip().split(".")[0]] += int(self_us) / 1e6
    return sorted(by_package.items(), key=lambda kv: -kv[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip", default="", help="comma list of: worker,dashboard,classic")
    args = parser.parse_args()
    skip = set(args.skip.split(","))
    print(f"load average before: {os.getloadavg()[0]:.2f}; medians of {args.rounds} rounds")
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        torch_s, train_s = [], []
        for i in range(args.rounds):
            torch_s.append(wall([sys.executable, "-c", "import torch"]))
            db = str(tmp / f"train{i}.db")
            train_s.append(wall([*GRADSCOPE, "train", "--quiet", "--db", db, *TINY]))
        base = statistics.median(torch_s)
        print(f"import torch:                     {base:6.2f} s")

        def show(what: str, seconds: list[float], target: str = "") -> None:
            s = statistics.median(seconds)
            print(f"{what:<33} {s:6.2f} s  {s / base:5.2f}x import torch  {target}")

        show("tiny gradscope train:", train_s, "[target <= 2x]")
        print("  import profile (self time by top-level package, one run):")
        for package, seconds in import_profile(tmp)[:10]:
            print(f"    {package:<24} {seconds:6.3f} s")
        if "worker" not in skip:
            times = [worker_times(tmp, i) for i in range(args.rounds)]
            show("gradscope worker to first claim:", [t[0] for t in times])
            show("  ... to the tiny run's end:", [t[1] for t in times])
        if "dashboard" not in skip:
            show(
                "gradscope dashboard to health:",
                [dashboard_time(tmp, i) for i in range(args.rounds)],
            )
        if "classic" not in skip:
            show(
                "classic comparison, warm worker:",
                [classic_time(tmp, i) for i in range(args.rounds)],
                "[target <= 4 s]",
            )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
