"""The API's run belongs to the process that created it (issue 24, item 12): after os.fork() a
child's log_epoch is refused with a clear error, and its exit (leaving `with`, finish(), the end
of the script) neither hangs nor finishes the parent's run. Odd heartbeat intervals are refused.
"""

from __future__ import annotations

import math
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

import gradscope
from gradscope.db.engine import make_engine
from gradscope.db.queries import get_run

FORKED = """
import os, sys, torch, gradscope
mode = sys.argv[2]
model = torch.nn.Linear(4, 1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
with gradscope.init(db=sys.argv[1], name="parent") as run:
    run.watch(model, opt)
    model(torch.ones(3, 4)).sum().backward(); opt.step()
    run.log_epoch(train_loss=1.0)  # still being recorded when the fork happens
    pid = os.fork()
    if pid == 0:
        try:
            run.log_epoch(train_loss=2.0)
        except RuntimeError as exc:
            print("child refused:", exc, flush=True)
        if mode == "finish":
            print("child finish:", run.finish(), flush=True)
        elif mode == "raise":
            raise SystemExit(3)  # leaves `with` through __exit__, then atexit
        sys.exit(0)  # the end of the child's script: atexit runs
    _, status = os.waitpid(pid, 0)
    print("child exit:", os.waitstatus_to_exitcode(status), flush=True)
    run.log_epoch(train_loss=0.5)
    run.log_epoch(train_loss=0.25)
print("parent:", run.status, run.id, flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["exit", "finish", "raise"])
def test_a_forked_child_neither_records_nor_finishes_the_parents_run(
    db_path: Path, mode: str
) -> None:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    # The timeout only turns a hang (the bug) into a failure; it is no speed target.
    out = subprocess.run(
        [sys.executable, "-c", FORKED, str(db_path), mode],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "child refused: run" in out.stdout and "belongs to process" in out.stdout
    assert f"child exit: {3 if mode == 'raise' else 0}" in out.stdout
    status, run_id = out.stdout.strip().splitlines()[-1].split()[1:]
    assert status == "completed"
    engine = make_engine(str(db_path))
    run = get_run(engine, run_id)
    assert (run.status, run.epochs_done) == ("completed", 3)
    engine.dispose()
    with sqlite3.connect(db_path) as conn:
        losses = conn.execute(
            "SELECT train_loss FROM epoch_metrics WHERE run_id = ? ORDER BY epoch", (run_id,)
        ).fetchall()
    assert [loss for (loss,) in losses] == [1.0, 0.5, 0.25]


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, 0.001, "2"])
def test_odd_heartbeat_intervals_are_refused(db_path: Path, bad: object) -> None:
    with pytest.raises(ValueError, match="heartbeat_s"):
        gradscope.init(db=str(db_path), heartbeat_s=bad)  # type: ignore[arg-type]
