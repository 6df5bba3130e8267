"""The background runner: claim queued runs, train them, heartbeat, honour cancel, recover
stale runs, and stop cleanly on SIGTERM/SIGINT.

Process model: `run_worker` with concurrency 1 trains in this process; with N > 1 it loads
torch and the rest once, then forks N child processes (spawn where fork is unsafe) that each
claim and train, and forwards SIGTERM/SIGINT to them. Each training process has one heartbeat
thread (gradscope.runner.heartbeat.Heartbeat) that heartbeats its claimed runs every `heartbeat_s`
(learning of cancel requests and of runs taken away from it) and, as chores, now and then marks
other workers' stale runs "worker lost" and checks that its parent process lives. Training
itself polls `should_stop`, which only reads flags in memory, about once a second and at every
epoch end.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gradscope.db.engine import display_url, make_engine
from gradscope.db.epoch_writes import EpochWriter
from gradscope.db.errors import StorageError
from gradscope.db.lifecycle import Claim, claim_next, recover_lost, release, running_workers
from gradscope.runner.heartbeat import Chore, Heartbeat
from gradscope.vocab.config import ConfigError, RunConfig, make_config
from gradscope.vocab.protocol import (
    HEARTBEAT_S,
    STALE_AFTER_S,
    local_pid,
    recovery_every_s,
    worker_identity,
)

DEFAULT_POLL_S = 1.0
DEFAULT_RETRIES = 1
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# fork shares the parent's imports; macOS and Windows only spawn safely.
CHILD_START_METHOD = "fork" if sys.platform.startswith("linux") else "spawn"


@dataclass(frozen=True)
class WorkerOptions:
    db: str
    concurrency: int = 1
    exit_when_idle: bool = False
    max_runs: int | None = None  # runs across all of this worker's processes
    heartbeat_s: float = HEARTBEAT_S
    stale_after_s: float = STALE_AFTER_S
    poll_s: float = DEFAULT_POLL_S  # how often an idle worker looks for queued runs
    retries: int = DEFAULT_RETRIES  # times a lost run is queued again before it fails
    idle_exit_s: float | None = None  # leave after this long without a queued run (elastic)
    pool_size: int | None = None  # database connections per process (PostgreSQL)


def log(message: str) -> None:
    stamp = datetime.now().strftime("%H:%M:%S")
    # One write per line: several processes share this stream, and a pipe keeps writes
    # under 4 KiB whole.
    sys.stderr.write(f"{stamp} {message}\n")
    sys.stderr.flush()


class RunBudget:
    """`--max-runs` shared by every process of one worker (a counter in shared memory)."""

    def __init__(self, limit: int | None, counter: Any) -> None:
        self.limit = limit
        self.counter = counter  # multiprocessing.Value("i")

    def take(self) -> bool:
        with self.counter.get_lock():
            if self.limit is not None and self.counter.value >= self.limit:
                return False
            self.counter.value += 1
            return True

    def adjust(self, delta: int) -> None:
        # A group claim counts every member, so --max-runs may be overshot by one group.
        with self.counter.get_lock():
            self.counter.value += delta


def _load_execute_group() -> Callable[..., Any] | None:
    """gradscope.runner.execute.execute_group when that module provides it (batched ensembles)."""
    try:
        from gradscope.runner.execute import execute_group
    except ImportError:
        return None
    return execute_group


def warm_up() -> None:
    """Import what the first training run needs (torch, the engine: ~2 s) and run one tiny
    training in memory (~50 ms), so the first claimed run pays neither imports nor torch's
    first-call set-up of its kernels."""
    from gradscope.runner.execute import warm_up as warm_training

    warm_training()


class Slot:
    """One training process's loop: claim, train, repeat; plus its heartbeat thread."""

    def __init__(self, opts: WorkerOptions, budget: RunBudget, parent_pid: int | None) -> None:
        self.opts = opts
        self.budget = budget
        self.parent_pid = parent_pid
        self.name = worker_identity()
        self.engine = make_engine(opts.db, pool_size=opts.pool_size)
        self.store = EpochWriter(self.engine, worker=self.name)
        self.stop_reason: str | None = None
        self.runs_done = 0
        self._wake = threading.Event()
        self.heartbeat = Heartbeat(
            self.engine,
            self.name,
            every_s=opts.heartbeat_s,
            say=lambda message: log(f"worker {self.name}: {message}"),
            chores=[
                Chore(recovery_every_s(opts.heartbeat_s, opts.stale_after_s), self._recover),
                Chore(0.0, self._check_parent),
            ],
        )

    @property
    def busy(self) -> bool:
        """Whether a claimed run is being trained now."""
        return bool(self.heartbeat.run_ids)

    # -- stopping ---------------------------------------------------------------------------
    def request_stop(self, reason: str = "interrupted") -> None:
        """Called from a signal handler or the heartbeat thread: runs stop at their next
        check and end with `reason`; no new run is claimed."""
        if self.stop_reason is None:
            self.stop_reason = reason
        self._wake.set()

    def should_stop(self, run_ids: Sequence[str]) -> str | None:
        """For train(): the status to stop with, or None. Reads memory only (cheap)."""
        if self.stop_reason is not None:
            return self.stop_reason
        # "interrupted" when another worker marked the runs lost: their final status is
        # already written and the guarded finish will not overwrite it.
        return self.heartbeat.should_stop(run_ids)

    # -- the loop ---------------------------------------------------------------------------
    def run(self) -> int:
        try:
            self._recover()
        except StorageError as exc:  # transient; the heartbeat thread tries again
            log(f"worker {self.name} could not check for lost runs: {exc}")
        if not self.opts.exit_when_idle:
            # A long-lived worker pays the first run's imports (torch and the training engine,
            # about two seconds) now, while idle, not while a run waits. A
            # worker that may find the queue empty and exit pays them only if it trains.
            warm_up()
        log(f"worker {self.name} ready, waiting for runs in {display_url(self.opts.db)}")
        self.heartbeat.start()
        idle_since = time.monotonic()
        try:
            while self.stop_reason is None:
                if not self.budget.take():
                    break
                try:
                    claim = claim_next(self.engine, self.name)
                except StorageError as exc:
                    self.budget.adjust(-1)
                    log(f"worker {self.name} cannot claim a run: {exc}")
                    self._wake.wait(self.opts.poll_s)
                    continue
                if claim is None:
                    self.budget.adjust(-1)
                    idle_s = time.monotonic() - idle_since
                    if self.opts.exit_when_idle or (
                        self.opts.idle_exit_s is not None and idle_s >= self.opts.idle_exit_s
                    ):
                        # Before leaving, settle the runs this worker can see are lost (their
                        # process is gone): queued again, they are this worker's work.
                        if self._settle_lost():
                            continue
                        break
                    self._wake.wait(self.opts.poll_s)
                    continue
                self.budget.adjust(len(claim.run_ids) - 1)
                try:
                    self._train_claim(claim)
                except StorageError as exc:
                    # The database went away mid-run; the run stays `running` until its
                    # heartbeat goes stale and some worker marks it lost.
                    log(f"worker {self.name}: database error while training: {exc}")
                idle_since = time.monotonic()
        finally:
            self.heartbeat.stop()
            self.engine.dispose()
        return self.runs_done

    def _train_claim(self, claim: Claim) -> None:
        self.heartbeat.track(claim.run_ids)
        try:
            configs: dict[str, RunConfig] = {}
            for run_id, raw in zip(claim.run_ids, claim.configs, strict=True):
                try:
                    configs[run_id] = make_config(raw)
                except ConfigError as exc:
                    self.store.finish_run(run_id, "failed", error=f"invalid config: {exc}")
                    self.runs_done += 1
            ids = [i for i in claim.run_ids if i in configs]
            if len(ids) == 1:
                self._train_one(ids[0], configs[ids[0]])
            elif ids:
                self._train_group(ids, [configs[i] for i in ids])
        finally:
            self.heartbeat.track(())

    def _train_one(self, run_id: str, cfg: RunConfig) -> None:
        from gradscope.runner.execute import (
            execute_run,  # imports torch: only training processes pay
        )

        log(f"worker {self.name} training {run_id} ({cfg.arch}, depth {cfg.depth})")
        result = execute_run(self.store, run_id, cfg, lambda: self.should_stop((run_id,)))
        self.runs_done += 1
        detail = f": {result.error}" if result.error else ""
        log(f"worker {self.name} run {run_id} {result.status}{detail}")

    def _train_group(self, run_ids: list[str], cfgs: list[RunConfig]) -> None:
        execute_group = _load_execute_group()
        if execute_group is not None:
            log(f"worker {self.name} training {len(run_ids)} runs as one batched ensemble")
            try:
                results = execute_group(
                    self.store, run_ids, cfgs, lambda: self.should_stop(run_ids)
                )
            except Exception as exc:  # noqa: BLE001 - a failed group fails its runs, not the worker
                detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
                for run_id in run_ids:
                    self.store.finish_run(run_id, "failed", error=detail)
                log(f"worker {self.name} group failed: {detail}")
            else:
                statuses = ", ".join(sorted({r.status for r in results}))
                log(f"worker {self.name} group of {len(run_ids)} done ({statuses})")
                for run_id, r in zip(run_ids, results, strict=False):
                    if r.error:  # a member that failed or diverged says why, as a solo run does
                        log(f"worker {self.name} run {run_id} {r.status}: {r.error}")
            self.runs_done += len(run_ids)
            return
        # No batched trainer here: the members are trained one after another, exactly as solo
        # runs would be; the heartbeat keeps the waiting members fresh meanwhile.
        for index, (run_id, cfg) in enumerate(zip(run_ids, cfgs, strict=True)):
            if self.stop_reason is not None:
                back = release(self.engine, run_ids[index:], self.name)
                if back:
                    log(f"worker {self.name} put {len(back)} unstarted runs back in the queue")
                return
            if self.heartbeat.cancelled(run_id) or self.store.cancel_requested(run_id):
                self.store.finish_run(run_id, "cancelled")
                self.runs_done += 1
                continue
            self._train_one(run_id, cfg)

    # -- the heartbeat's chores ---------------------------------------------------------------
    def _recover(self) -> None:
        lost = recover_lost(
            self.engine, self.opts.stale_after_s, spare_worker=self.name, retries=self.opts.retries
        )
        for run_id, outcome in lost.items():
            if outcome == "queued":
                log(f"worker {self.name} queued lost run {run_id} again (worker lost)")
            else:
                log(f"worker {self.name} marked run {run_id} failed: worker lost")

    def _settle_lost(self) -> bool:
        """Recover stale runs, and at once the runs of processes on this machine that are
        gone (a killed sibling or worker). True when some were queued again."""
        try:
            dead = [w for w in running_workers(self.engine) if process_gone(w)]
            lost = recover_lost(
                self.engine,
                self.opts.stale_after_s,
                spare_worker=self.name,
                retries=self.opts.retries,
                dead_workers=dead,
            )
        except StorageError as exc:
            log(f"worker {self.name} could not check for lost runs: {exc}")
            return False
        for run_id, outcome in lost.items():
            done = "queued it again" if outcome == "queued" else "marked it failed"
            log(f"worker {self.name}: run {run_id} lost its worker; {done}")
        return "queued" in lost.values()

    def _check_parent(self) -> None:
        if self.parent_pid is not None and os.getppid() != self.parent_pid:
            log(f"worker {self.name}: parent process is gone, stopping")
            self.request_stop("interrupted")


# -- processes ----------------------------------------------------------------------------


def process_gone(worker: str) -> bool:
    """Whether the process a runs.worker name ("host:pid", "host:pid (role)") stands for is
    known to be gone: on this machine only (elsewhere, only a stale heartbeat tells)."""
    pid = local_pid(worker)
    if pid is None or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # alive, another user's
    try:  # a killed child not yet reaped by its parent is a zombie: gone too
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] == "Z"
    except (OSError, IndexError):
        return False


def _install_stop_handlers(handler: Callable[[int, Any], None]) -> dict[int, Any]:
    return {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}


def _restore_handlers(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def run_slot(opts: WorkerOptions, budget: RunBudget, parent_pid: int | None = None) -> int:
    """Run one training loop in this process until stopped or idle; returns runs handled."""
    slot = Slot(opts, budget, parent_pid)
    previous = _install_stop_handlers(lambda _sig, _frame: slot.request_stop("interrupted"))
    try:
        return slot.run()
    finally:
        _restore_handlers(previous)


def _slot_process(opts: WorkerOptions, counter: Any, done: Any, parent_pid: int) -> None:
    """Entry point of a child training process."""
    runs = run_slot(opts, RunBudget(opts.max_runs, counter), parent_pid)
    with done.get_lock():
        done.value += runs


def run_worker(opts: WorkerOptions) -> int:
    """The `gradscope worker` process: returns how many runs its processes handled."""
    ctx = multiprocessing.get_context(CHILD_START_METHOD)
    counter = ctx.Value("i", 0)
    if opts.concurrency <= 1:
        return run_slot(opts, RunBudget(opts.max_runs, counter))
    if CHILD_START_METHOD == "fork":
        # Children inherit the loaded modules: seconds of imports paid once, not N times.
        # Safe: no threads run here yet and nothing has touched CUDA.
        warm_up()

    done = ctx.Value("i", 0)
    children = [
        ctx.Process(
            target=_slot_process,
            args=(opts, counter, done, os.getpid()),
            name=f"gradscope-worker-{i}",
        )
        for i in range(opts.concurrency)
    ]
    stopping = threading.Event()

    def forward(_sig: int, _frame: Any) -> None:
        stopping.set()
        for child in children:
            if child.pid is not None and child.exitcode is None:
                os.kill(child.pid, signal.SIGTERM)

    previous = _install_stop_handlers(forward)
    try:
        for child in children:
            child.start()
            if stopping.is_set():  # a signal came while we were starting children
                os.kill(child.pid, signal.SIGTERM)  # type: ignore[arg-type]
        for child in children:
            child.join()
    finally:
        _restore_handlers(previous)
    failed = [c.name for c in children if c.exitcode not in (0, None)]
    if failed and opts.exit_when_idle and not stopping.is_set():
        # A child died (killed) after its siblings found the queue empty and left: settle
        # its runs now and train what was queued again, rather than leave them `running`.
        done.value += run_slot(opts, RunBudget(opts.max_runs, counter))
    if failed:
        raise RuntimeError(f"worker processes exited with errors: {', '.join(failed)}")
    return done.value


# -- for the dashboard: one background worker per database --------------------------------


def spawn_worker_process(
    db: str,
    *,
    concurrency: int = 1,
    heartbeat_s: float = HEARTBEAT_S,
    stale_after_s: float = STALE_AFTER_S,
    log_path: str | os.PathLike[str] | None = None,
) -> subprocess.Popen:
    """Start `gradscope worker` for `db` in the background; its output goes to `log_path`
    (or nowhere). Stop it with `stop_worker_process`: its runs end `interrupted`."""
    command = [
        sys.executable,
        "-c",
        "from gradscope.cli import main; main()",
        "worker",
        "--db",
        db,
        "--concurrency",
        str(concurrency),
        "--heartbeat",
        str(heartbeat_s),
        "--stale-after",
        str(stale_after_s),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    output = open(log_path, "ab") if log_path is not None else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, env=env
        )
    finally:
        if log_path is not None:
            output.close()  # type: ignore[union-attr] - the child holds its own copy


def stop_worker_process(process: subprocess.Popen, timeout_s: float = 15.0) -> int:
    """SIGTERM a worker started by `spawn_worker_process` (or any child process) and wait;
    SIGKILL if it hangs (a worker's runs are then marked "worker lost" by the next worker).
    Returns the exit code."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
