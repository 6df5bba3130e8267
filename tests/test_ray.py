"""`gradscope worker --ray`: the queue trained by Ray actors, on real local Ray instances and a
real SQLite file or PostgreSQL database. Ray starts in seconds, so the tests that drive the
workers in this process share one private instance (`ray_local`); the CLI tests start their own
(`--ray local`, or a head from `ray start --head` that the test stops by its process group).
No sleeps as synchronisation: every wait polls a condition with a deadline."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port
from sqlalchemy import Engine
from worker_helpers import ENDLESS, SMALL, WorkerProcess, epoch_rows, queue_runs, wait_for

from gradscope.db.engine import make_engine
from gradscope.db.lifecycle import cancel_runs, queue_sweep
from gradscope.db.queries import get_run, list_runs
from gradscope.vocab.sweep import plan_sweep

ray = pytest.importorskip("ray", reason="the ray extra is not installed: pip install -e .[ray]")

from gradscope.runner.ray_workers import (  # noqa: E402
    RayOptions,
    run_ray_workers,
    running_local_instance,
)
from gradscope.runner.worker import WorkerOptions  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.ray]


@pytest.fixture(scope="module")
def ray_local() -> Iterator[None]:
    """One private Ray instance in this process for the module (the driver reuses it)."""
    temp_dir = tempfile.mkdtemp(prefix="gs-ray-test-", dir="/tmp")
    ray.init(
        num_cpus=4,
        include_dashboard=False,
        object_store_memory=100 * 1024 * 1024,
        _temp_dir=temp_dir,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )
    try:
        yield
    finally:
        ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def engine(db_path: Path) -> Iterator[Engine]:
    engine = make_engine(str(db_path))
    yield engine
    engine.dispose()


def _sweep(engine: Engine, seeds: str, **values: object) -> list[str]:
    config = {**{k: str(v) for k, v in {**SMALL, **values}.items()}, "seed": seeds}
    return queue_sweep(engine, plan_sweep(config, batch=True))


def _driver_thread(opts: WorkerOptions, ray_opts: RayOptions) -> tuple[threading.Thread, list]:
    """run_ray_workers in a thread (no signal handlers there); the result lands in `out`."""
    out: list = []
    thread = threading.Thread(target=lambda: out.append(run_ray_workers(opts, ray_opts)))
    thread.start()
    return thread, out


# -- through the CLI: `--ray local` ----------------------------------------------------------


def test_mixed_queue_drained_by_ray_local(db_path: Path, engine: Engine) -> None:
    solo = queue_runs(engine, 3, epochs=3)
    group = _sweep(engine, "0,1,2", epochs=2)
    driver = WorkerProcess(
        str(db_path), "--ray", "local", "--concurrency", "2", "--exit-when-idle", "--poll", "0.1"
    )
    assert driver.wait(timeout=240) == 0, driver.output
    runs = {r.id: r for r in list_runs(engine)}
    assert {runs[i].status for i in solo + group} == {"completed"}
    for run_id in solo:
        assert epoch_rows(engine, run_id) == [1, 2, 3]
    for run_id in group:
        assert epoch_rows(engine, run_id) == [1, 2]
    # (Not counted from the actors' log lines: Ray relays them late, and may drop the last
    # ones at shutdown.) Claimed once each; the group by one actor, as one claim.
    assert {runs[i].attempts for i in solo + group} == {1}
    assert len({runs[i].worker for i in group}) == 1
    assert {runs[i].hostname for i in solo + group} == {socket.gethostname()}
    assert {runs[i].device for i in solo + group} == {"cpu"}
    assert "worker finished after 6 runs" in driver.output
    assert "Traceback" not in driver.output


def test_ctrl_c_of_the_driver_interrupts_its_actors_runs(db_path: Path, engine: Engine) -> None:
    ids = queue_runs(engine, 2, **ENDLESS)
    driver = WorkerProcess(str(db_path), "--ray", "local", "--concurrency", "2", "--poll", "0.1")
    try:
        wait_for(
            lambda: all(get_run(engine, i).epochs_done >= 1 for i in ids),
            timeout=180,
            what="both runs training on actors",
        )
        driver.proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert driver.wait(timeout=60) == 0, driver.output
    finally:
        driver.kill()
    for run_id in ids:
        run = get_run(engine, run_id)
        assert run.status == "interrupted", driver.output
        assert len(epoch_rows(engine, run_id)) == run.epochs_done >= 1
    assert len({get_run(engine, i).worker for i in ids}) == 2
    assert "stopping 2 worker actors" in driver.output


# -- in this process, on the shared instance -------------------------------------------------


def test_killed_actor_run_is_retried_once_and_completes(
    ray_local: None, db_path: Path, engine: Engine
) -> None:
    epochs = 150  # long enough to be killed mid-run, a few seconds in all
    [run_id] = queue_runs(engine, 1, epochs=epochs)
    # --max-runs 2: the killed attempt and the retry; then the replacement actor leaves.
    opts = WorkerOptions(db=str(db_path), max_runs=2, heartbeat_s=0.2, poll_s=0.05, retries=1)
    thread, handled = _driver_thread(opts, RayOptions("local", cpus_per_worker=1))
    try:
        first = wait_for(
            lambda: (r := get_run(engine, run_id)).epochs_done >= 2 and r,
            timeout=120,
            what="two epochs on the first actor",
        )
        # The actor's process dies as on a lost node: no chance to clean up.
        pid = int(first.worker.rsplit(":", 1)[1])
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), what="actor gone")
        # The driver learns of the death from Ray and settles the run at once (issue 24, item
        # 10): queued again with its epochs removed, not left `running` until it is stale.
        wait_for(
            lambda: get_run(engine, run_id).worker != first.worker,
            timeout=120,
            what="the dead actor's run queued again",
        )
        thread.join(timeout=180)
        assert not thread.is_alive(), "the driver did not finish"
    finally:
        thread.join(timeout=60)
    run = get_run(engine, run_id)
    assert (run.status, run.attempts, run.epochs_done) == ("completed", 2, epochs)
    assert run.worker != first.worker  # a replacement actor trained it
    assert epoch_rows(engine, run_id) == list(range(1, epochs + 1))  # not duplicated
    assert handled == [1]  # the killed actor's count died with it


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_elastic_actors_follow_the_queue(
    ray_local: None, db_path: Path, engine: Engine, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[str] = []

    def log() -> str:
        seen.append(capsys.readouterr().err)
        return "".join(seen)

    first = queue_runs(engine, 1) + _sweep(engine, "0,1")  # demand 2: a run and a group
    # --max-runs 5 ends the test: two waves of work, then the budget is spent.
    opts = WorkerOptions(db=str(db_path), max_runs=5, poll_s=0.05)
    ray_opts = RayOptions("local", max_workers=3, idle_timeout_s=0.2)
    thread, handled = _driver_thread(opts, ray_opts)
    try:
        wait_for(
            lambda: {get_run(engine, i).status for i in first} == {"completed"},
            timeout=120,
            what="the first wave",
        )
        # Idle actors leave after --idle-timeout.
        wait_for(lambda: "0 remain" in log(), timeout=60, what="every idle actor gone")
        second = queue_runs(engine, 2, seed=7)
        thread.join(timeout=120)
        assert not thread.is_alive()
    finally:
        thread.join(timeout=60)
    assert {get_run(engine, i).status for i in second} == {"completed"}
    # Two actors per wave, not three: a group counts once.
    assert log().count("2 queued, starting 2 worker actors") == 2, log()
    assert "starting 3" not in log()
    assert handled == [5]


@pytest.mark.postgres
def test_plain_worker_and_ray_driver_share_a_postgres_queue(ray_local: None, pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        # Each actor's engine is small: one connection plus one overflow.
        actor_engine = make_engine(pg_url, pool_size=1)
        assert (actor_engine.pool.size(), actor_engine.pool._max_overflow) == (1, 1)
        actor_engine.dispose()
        # The oldest run never ends by itself: the plain worker claims it first (creation
        # order) and holds it while the Ray actors drain the rest, so both kinds train runs
        # whatever either one's start-up costs on a loaded machine; then it is cancelled.
        [held] = queue_runs(engine, 1, **ENDLESS)
        ids = queue_runs(engine, 16, epochs=4) + _sweep(engine, "0,1,2,3", epochs=3)
        plain = WorkerProcess(pg_url, "--exit-when-idle", "--poll", "0.05")
        plain_name = f"{socket.gethostname()}:{plain.pid}"
        wait_for(
            lambda: get_run(engine, held).worker == plain_name,
            timeout=120,
            what="the plain worker's claim of the oldest run",
        )
        opts = WorkerOptions(db=pg_url, exit_when_idle=True, poll_s=0.05)
        thread, _ = _driver_thread(opts, RayOptions("local", cpus_per_worker=1))
        thread.join(timeout=240)
        assert not thread.is_alive()
        assert cancel_runs(engine, [held]) == {held: "cancel requested"}
        assert plain.wait(timeout=120) == 0, plain.output
        runs = {r.id: r for r in list_runs(engine)}
        assert runs[held].status == "cancelled" and runs[held].worker == plain_name
        assert {runs[i].status for i in ids} == {"completed"}
        # Claimed once each (a second claim would count 2) and every epoch recorded once.
        assert {runs[i].attempts for i in [held, *ids]} == {1}
        for run_id in ids:
            assert epoch_rows(engine, run_id) == list(range(1, runs[run_id].epochs_total + 1))
        # The queue's other runs went to the Ray actors, not to the busy plain worker.
        assert all(runs[i].worker and runs[i].worker != plain_name for i in ids)
    finally:
        engine.dispose()


# -- a head started by `ray start --head` ----------------------------------------------------


@pytest.mark.postgres
def test_driver_against_a_ray_start_head_and_sigterm(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    temp_dir = tempfile.mkdtemp(prefix="gs-rh-", dir="/tmp")
    ray_bin = Path(sys.executable).with_name("ray")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # Its own session: every process of this head shares our process group, and only those
    # are stopped (never `ray stop`, which would stop anyone's Ray on this machine).
    head = subprocess.Popen(
        [str(ray_bin), "start", "--head", f"--port={port}", f"--temp-dir={temp_dir}",
         "--num-cpus=2", "--include-dashboard=false", "--disable-usage-stats"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        start_new_session=True,
    )  # fmt: skip
    try:
        out, _ = head.communicate(timeout=120)
        assert head.returncode == 0, out
        engine = make_engine(pg_url)
        ids = queue_runs(engine, 3)
        [endless] = queue_runs(engine, 1, **ENDLESS)
        driver = WorkerProcess(pg_url, "--ray", f"127.0.0.1:{port}", "--concurrency", "2")
        try:
            wait_for(
                lambda: (
                    {get_run(engine, i).status for i in ids} == {"completed"}
                    and get_run(engine, endless).epochs_done >= 1
                ),
                timeout=240,
                what="three runs completed and one training",
            )
            driver.proc.send_signal(signal.SIGTERM)
            assert driver.wait(timeout=60) == 0, driver.output
        finally:
            driver.kill()
        assert get_run(engine, endless).status == "interrupted"
        assert "worker finished after 4 runs" in driver.output
        # `--ray local` reuses the instance running on this machine (issue 25, item 2): no
        # private one to start and stop; the head runs on after the driver leaves.
        [again] = queue_runs(engine, 1, seed=9)
        monkeypatch.setenv("RAY_ADDRESS", f"127.0.0.1:{port}")
        local = WorkerProcess(pg_url, "--ray", "local", "--exit-when-idle", "--poll", "0.1")
        assert local.wait(timeout=180) == 0, local.output
        assert get_run(engine, again).status == "completed"
        assert f"on local: the Ray instance running at 127.0.0.1:{port}, reused" in local.output
        assert running_local_instance() == f"127.0.0.1:{port}"  # still answering
        engine.dispose()
    finally:
        _stop_group(head.pid)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _stop_group(pgid: int) -> None:
    """SIGTERM, then SIGKILL, the processes of our `ray start` (its process group)."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        try:
            wait_for(lambda: not _group_alive(pgid), timeout=5, what="ray head stopped")
            return
        except AssertionError:
            continue


def _group_alive(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False
