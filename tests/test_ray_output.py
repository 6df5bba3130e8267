"""What `gradscope worker --ray local` writes when its output is redirected to files: the
driver's and actors' lines, with no terminal colour codes and none of Ray's notices a user
cannot act on (its token-authentication warning, "Started a local Ray instance")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from worker_helpers import queue_runs

from gradscope.db.engine import make_engine
from gradscope.db.queries import get_run

pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e .[ray]")

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def test_ray_local_output_redirected_to_files_is_plain_and_quiet(
    db_path: Path, tmp_path: Path
) -> None:
    engine = make_engine(str(db_path))
    try:
        [run_id] = queue_runs(engine, 1, epochs=3)
    finally:
        engine.dispose()
    home = tmp_path / "home"  # a fresh home: where Ray would write its token
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") and k != "NO_COLOR"}
    env.update(HOME=str(home), OMP_NUM_THREADS="1")
    err_path, out_path = tmp_path / "stderr.txt", tmp_path / "stdout.txt"
    with err_path.open("w") as err, out_path.open("w") as out:
        code = subprocess.run(
            [sys.executable, "-c", "from gradscope.cli import main; main()", "worker",
             "--db", str(db_path), "--ray", "local", "--exit-when-idle", "--poll", "0.1"],
            stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env, timeout=240,
        ).returncode  # fmt: skip
    stderr, stdout = err_path.read_text(), out_path.read_text()
    assert code == 0, stderr
    engine = make_engine(str(db_path))
    try:
        assert get_run(engine, run_id).status == "completed", stderr
    finally:
        engine.dispose()
    # gradscope's own lines come through: the driver's, and an actor's as relayed by Ray
    # (with Ray's prefix, which is what was coloured).
    assert "ray driver: 1 worker actors on local: a private Ray instance" in stderr
    assert "worker finished after 1 run" in stderr
    assert "(WorkerActor pid=" in stderr and "ready, waiting for runs" in stderr, stderr
    for text in (stderr, stdout):
        assert "\x1b[" not in text, repr(text)
        assert "token" not in text.lower(), text
        assert "Started a local Ray instance" not in text
    assert not (home / ".ray").exists()  # nothing written to the user's home
