"""Time to verdict of a cure trial: the classic comparison's sigmoid run (moons 2048, depth 10,
width 32, Adam 1e-3, 20 epochs), cured on this machine.

Setup (not timed): the patient is trained once by `gradscope train`; each round starts from a
copy of that database. Timed, per round, in fresh processes, from the moment `gradscope cure` is
started to the moment the verdict is readable (every run of the trial finished):

- warm: the dashboard's case. A background worker (as `gradscope dashboard` starts one:
  spawn_worker_process, concurrency 1, default 1 s poll) is already running and idle; the clock
  runs from `gradscope cure` until a poll of the database (every 0.1 s) sees the trial done.
- cold: nothing running. `gradscope cure`, then `gradscope worker --exit-when-idle` (which loads
  torch itself), then `gradscope show --json` printing the verdict.

Prints the median and range of each over --rounds rounds, and the ratio to the 15 s target
(below 1.0 meets it), with the machine's load average (it may be shared).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/cure.py [--rounds 3] [--concurrency 1]
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)

from gradscope.db.engine import make_engine  # noqa: E402
from gradscope.db.trials import trial_frames  # noqa: E402
from gradscope.runner.worker import spawn_worker_process, stop_worker_process  # noqa: E402
from gradscope.vocab.fields import ACTIVE_STATUSES  # noqa: E402

TARGET_S = 15.0
CLASSIC = [
    *("--arch", "sigmoid", "--dataset", "moons", "--samples", "2048", "--depth", "10"),
    *("--width", "32", "--optimizer", "adam", "--lr", "1e-3", "--epochs", "20"),
]
GRADSCOPE = [sys.executable, "-c", "from gradscope.cli import main; main()"]
ENV = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def gradscope(*args: str) -> str:
    done = subprocess.run([*GRADSCOPE, *args], capture_output=True, text=True, env=ENV, check=False)
    if done.returncode != 0:
        raise SystemExit(f"gradscope {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def make_patient(folder: Path) -> tuple[Path, str]:
    db = folder / "patient.db"
    made = json.loads(gradscope("train", "--db", str(db), *CLASSIC, "--device", "cpu", "--json"))
    return db, made["id"]


def fresh_copy(patient_db: Path, folder: Path, name: str) -> Path:
    db = folder / name
    # SQLite's backup API: the patient's rows may still sit in its WAL file.
    with sqlite3.connect(patient_db) as src, sqlite3.connect(db) as dst:
        src.backup(dst)
    return db


def trial_done(db: Path, patient: str) -> bool:
    engine = make_engine(str(db))
    try:
        found = trial_frames(engine, patient)
    finally:
        engine.dispose()
    return found is not None and not found.runs["status"].isin(ACTIVE_STATUSES).any()


def warm_round(db: Path, patient: str, concurrency: int) -> float:
    log = db.with_suffix(".log")
    worker = spawn_worker_process(str(db), concurrency=concurrency, log_path=log)
    try:
        # Idle and ready (torch loaded), as the dashboard's worker is by the time of a click.
        while "ready" not in (log.read_text() if log.exists() else ""):
            if worker.poll() is not None:
                raise SystemExit(f"the worker exited: {log.read_text()}")
            time.sleep(0.05)
        start = time.perf_counter()
        gradscope("cure", patient, "--db", str(db))
        while not trial_done(db, patient):
            time.sleep(0.1)
        return time.perf_counter() - start
    finally:
        stop_worker_process(worker)


def cold_round(db: Path, patient: str, concurrency: int) -> tuple[float, dict]:
    start = time.perf_counter()
    gradscope("cure", patient, "--db", str(db))
    gradscope("worker", "--db", str(db), "--exit-when-idle", "--concurrency", str(concurrency))
    shown = json.loads(gradscope("show", patient, "--db", str(db), "--json"))
    elapsed = time.perf_counter() - start
    trials = [f["trial"] for f in shown["diagnosis"] if "trial" in f]
    assert trials and all(t["done"] for t in trials), trials
    # Each finding lists the cures named for it: every cure once, over all findings.
    verdicts = {v["cure"]: v for t in trials for v in t["verdicts"]}
    return elapsed, {**trials[0], "verdicts": list(verdicts.values())}


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.1f} s (range {min(values):.1f}–{max(values):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=1)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        patient_db, patient = make_patient(folder)
        warm, cold = [], []
        trial: dict = {}
        for r in range(args.rounds):
            warm.append(
                warm_round(fresh_copy(patient_db, folder, f"w{r}.db"), patient, args.concurrency)
            )
            seconds, trial = cold_round(
                fresh_copy(patient_db, folder, f"c{r}.db"), patient, args.concurrency
            )
            cold.append(seconds)
            print(f"round {r + 1}: warm {warm[-1]:.1f} s, cold {cold[-1]:.1f} s", flush=True)
    print(f"trial: {trial['runs']} runs on seeds {trial['seeds']}")
    for v in trial["verdicts"]:
        print("  " + v["text"])
    load = os.getloadavg()[0]
    print(f"load average (1 min): {load:.2f} on {os.cpu_count()} CPUs")
    print(
        f"warm worker (dashboard click -> verdict): {spread(warm)}; "
        f"ratio to the {TARGET_S:.0f} s target {statistics.median(warm) / TARGET_S:.2f}"
    )
    print(
        f"cold (cure + worker + show): {spread(cold)}; "
        f"ratio to the {TARGET_S:.0f} s target {statistics.median(cold) / TARGET_S:.2f}"
    )


if __name__ == "__main__":
    main()
