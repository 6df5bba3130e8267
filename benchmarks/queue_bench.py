"""How much does the queue cost? N worker processes draining tiny runs, against the same runs
trained back-to-back in one process, on SQLite and on PostgreSQL; and the per-run scheduling
overhead (claim + heartbeat + final status write) measured directly.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/queue_bench.py [--runs 100] [--workers N] [--ray]

Target: scheduling overhead under 5% of a one-second run (i.e. under 50 ms per run).
With --ray, the same queue is also drained by `gradscope worker --ray local` (the workers as
Ray actors); target: their per-run overhead within 2x of plain workers' and under 5% of a
one-second run. Both are measured on the time per run from the first claim to the last finish
(training of the tiny runs included, so that time bounds the scheduling overhead from above).
PostgreSQL is started privately with tests/pg_server.py; without its binaries it is skipped.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from sqlalchemy import Engine, func, select  # noqa: E402

from gradscope.db.engine import make_engine  # noqa: E402
from gradscope.db.epoch_writes import EpochWriter  # noqa: E402
from gradscope.db.lifecycle import claim_next, heartbeat  # noqa: E402
from gradscope.db.models import RunModel  # noqa: E402
from gradscope.db.queries import list_runs  # noqa: E402
from gradscope.db.transactions import orm, transaction  # noqa: E402
from gradscope.vocab.config import make_config  # noqa: E402
from gradscope.vocab.records import RunSpec  # noqa: E402

TINY = {"depth": "2", "width": "8", "samples": "256", "epochs": "1", "device": "cpu"}


def queue_tiny(db: str, runs: int) -> None:
    engine = make_engine(db)
    specs = [RunSpec(make_config({**TINY, "seed": str(i)}).model_dump()) for i in range(runs)]
    EpochWriter(engine).create_runs(specs)
    engine.dispose()


def back_to_back(db: str, runs: int) -> float:
    """Seconds for `runs` tiny runs trained one after another in this (warm) process."""
    from gradscope.runner.foreground import train_foreground

    engine = make_engine(db)
    train_foreground(engine, dict(TINY), progress=False)  # warm-up: imports, first-run costs
    started = time.perf_counter()
    for i in range(runs):
        train_foreground(engine, {**TINY, "seed": str(i)}, progress=False)
    elapsed = time.perf_counter() - started
    engine.dispose()
    return elapsed


def unfinished(engine: Engine) -> int:
    with transaction(engine) as conn, orm(conn) as s:
        return s.scalar(
            select(func.count()).select_from(RunModel).where(RunModel.status != "completed")
        )


def drain(db: str, runs: int, workers: int, ray: bool = False) -> tuple[float, float]:
    """(seconds from process start to exit, seconds from the first claim to the last finish by
    the database's clock) for one `gradscope worker --concurrency N` draining `runs` queued
    runs. The worker is long-lived (it loads torch before claiming, as in real use) and is
    stopped with SIGTERM once the queue is drained. `ray`: as `--ray local` actors (the Ray
    instance's start is in the first number, not the second)."""
    queue_tiny(db, runs)
    engine = make_engine(db)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", "from gradscope.cli import main; main()", "worker", "--db", db,
         "--concurrency", str(workers), "--poll", "0.05", *(["--ray", "local"] if ray else [])],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT,
    )  # fmt: skip
    try:
        while unfinished(engine):
            if proc.poll() is not None:
                raise RuntimeError(f"worker exited early with code {proc.returncode}")
            time.sleep(0.2)  # a benchmark's light polling, not synchronisation in a test
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
    ended = time.perf_counter()
    finished = list_runs(engine)
    engine.dispose()
    first_claim = min(r.started_at for r in finished if r.started_at)
    last_finish = max(r.finished_at for r in finished if r.finished_at)
    return ended - started, (last_finish - first_claim).total_seconds()


def scheduling_overhead_ms(db: str, runs: int) -> dict[str, float]:
    """Median milliseconds per run of the queue's own writes, without training."""
    queue_tiny(db, runs)
    engine = make_engine(db)
    store = EpochWriter(engine)
    timings: dict[str, list[float]] = {"claim": [], "heartbeat": [], "finish": []}
    for _ in range(runs):
        t0 = time.perf_counter()
        claim = claim_next(engine, "bench")
        t1 = time.perf_counter()
        assert claim is not None
        heartbeat(engine, claim.run_ids, "bench")
        t2 = time.perf_counter()
        store.finish_run(claim.run_ids[0], "completed")
        t3 = time.perf_counter()
        timings["claim"].append(t1 - t0)
        timings["heartbeat"].append(t2 - t1)
        timings["finish"].append(t3 - t2)
    engine.dispose()
    out = {k: statistics.median(v) * 1000 for k, v in timings.items()}
    out["total"] = sum(out.values())
    return out


def ray_scheduling_overhead_ms(db: str, runs: int) -> dict[str, float]:
    """`scheduling_overhead_ms` run inside a Ray actor on a private local instance (what a
    `--ray` worker does per run), plus the two round trips to the driver's budget actor that
    each claim costs with --max-runs. Medians, milliseconds per run."""
    import shutil

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    from gradscope.runner.ray_workers import BudgetActor, RemoteBudget

    temp_dir = tempfile.mkdtemp(prefix="gs-ray-bench-", dir="/tmp")
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=10**8, _temp_dir=temp_dir)
    try:
        actor = ray.remote(_OverheadActor).options(num_cpus=1).remote()
        out = ray.get(actor.measure.remote(db, runs))
        budget = RemoteBudget(ray.remote(BudgetActor).options(num_cpus=0).remote(None))
        budget.take()  # first call pays the actor's start
        trips = []
        for _ in range(runs):
            t0 = time.perf_counter()
            budget.take()
            budget.adjust(0)
            trips.append(time.perf_counter() - t0)
        out["budget"] = statistics.median(trips) * 1000
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    return out


class _OverheadActor:
    def measure(self, db: str, runs: int) -> dict[str, float]:
        return scheduling_overhead_ms(db, runs)


def report(
    label: str, db_for: Callable[[str], str], runs: int, worker_counts: list[int], ray: bool
) -> None:
    base = back_to_back(db_for("base"), runs)
    print(f"\n== {label}: {runs} tiny runs (depth 2, width 8, 256 samples, 1 epoch)")
    print(f"back-to-back in one warm process: {base:6.2f} s ({base / runs * 1000:5.1f} ms/run)")
    for workers in worker_counts:
        total, draining = drain(db_for(f"drain{workers}"), runs, workers)
        print(
            f"{workers} worker process(es), first claim to last finish: {draining:6.2f} s "
            f"({draining / runs * 1000:5.1f} ms/run); time ratio queue / back-to-back "
            f"{draining / base:4.2f}  [worker command start to exit: {total:5.2f} s]"
        )
        if not ray:
            continue
        ray_total, ray_draining = drain(db_for(f"ray{workers}"), runs, workers, ray=True)
        plain_ms, ray_ms = draining / runs * 1000, ray_draining / runs * 1000
        print(
            f"{workers} Ray actor(s), first claim to last finish: {ray_draining:6.2f} s "
            f"({ray_ms:5.1f} ms/run)  [--ray local start to exit: {ray_total:5.2f} s]\n"
            f"  per run, Ray / plain: {ray_ms / plain_ms:4.2f} (target <= 2), Ray - plain "
            f"{ray_ms - plain_ms:+.1f} ms; Ray's whole per-run time, training included (an "
            f"upper bound on its scheduling overhead): {ray_ms / 10:.2f}% of a one-second run "
            f"(target < 5%)"
        )
    over = scheduling_overhead_ms(db_for("overhead"), runs)
    print(
        f"scheduling overhead per run (median): claim {over['claim']:.2f} ms + heartbeat "
        f"{over['heartbeat']:.2f} ms + final status {over['finish']:.2f} ms = "
        f"{over['total']:.2f} ms = {over['total'] / 10:.2f}% of a one-second run (target < 5%)"
    )
    if ray:
        ro = ray_scheduling_overhead_ms(db_for("rayoverhead"), runs)
        with_budget = ro["total"] + ro["budget"]
        print(
            f"the same inside a Ray actor: claim {ro['claim']:.2f} ms + heartbeat "
            f"{ro['heartbeat']:.2f} ms + final status {ro['finish']:.2f} ms = {ro['total']:.2f} "
            f"ms; with --max-runs add {ro['budget']:.2f} ms of budget round trips = "
            f"{with_budget:.2f} ms\n  Ray actor / plain: {with_budget / over['total']:4.2f} "
            f"(target <= 2); {with_budget / 10:.2f}% of a one-second run (target < 5%)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--workers", type=int, nargs="+", default=sorted({1, os.cpu_count() or 2}))
    parser.add_argument("--skip-postgres", action="store_true")
    parser.add_argument("--ray", action="store_true", help="also drain with --ray local actors")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")

    with tempfile.TemporaryDirectory(prefix="gradscope-bench-") as tmp:
        report(
            "SQLite", lambda name: str(Path(tmp) / f"{name}.db"), args.runs, args.workers, args.ray
        )

    if args.skip_postgres:
        return
    from pg_server import PostgresServer, PostgresUnavailable

    server = PostgresServer()
    try:
        server.start()
    except PostgresUnavailable as exc:
        print(f"\n== PostgreSQL skipped: {exc}")
        return
    try:
        report("PostgreSQL", server.create_database, args.runs, args.workers, args.ray)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
