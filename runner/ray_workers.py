"""`gradscope worker --ray ADDRESS`: the same workers, as Ray actors placed by a Ray cluster.

The driver (this process) connects to a cluster (`--ray local`: the Ray instance running on
this machine, else a private one it starts and stops), and keeps `--concurrency` actors
running, or, with `--max-workers`, as many as there is queued work. Each actor wraps one
`gradscope.runner.worker.Slot`, the loop a plain worker process runs: it claims from the
database, trains, heartbeats and recovers lost runs exactly as `gradscope worker` does, so the
database stays the one source of truth and Ray and plain workers can share a queue. Ray only
places the actors (by their CPU/GPU resources) and relays their log lines here.

Stopping the driver (SIGTERM, Ctrl-C) asks every actor to stop; their runs end `interrupted`.
An actor that dies (killed, node lost) leaves its runs `running` until their heartbeat is stale;
then any worker queues them again (`--retries`) and the driver starts a replacement actor.

Ray is imported lazily: it is an optional extra (`pip install gradscope[ray]`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import multiprocessing
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from gradscope.db.engine import make_engine, to_url
from gradscope.db.errors import StorageError
from gradscope.db.lifecycle import queued_demand, recover_lost
from gradscope.runner.worker import STOP_SIGNALS, RunBudget, Slot, WorkerOptions, log
from gradscope.vocab.protocol import recovery_every_s

LOCAL = "local"
RAY_MISSING = (
    "--ray needs Ray, which is not installed: pip install 'gradscope[ray]' "
    "(or pip install 'ray>=2.60')"
)
# Database connections per actor (PostgreSQL): the training loop and the heartbeat thread.
ACTOR_POOL_SIZE = 1
LOCAL_OBJECT_STORE_BYTES = 128 * 1024 * 1024
# How long stopped actors get to end their runs `interrupted` before they are killed.
STOP_GRACE_S = 30.0
# How long a "host:port" Ray address may take to accept a connection.
CONNECT_TIMEOUT_S = 10.0
# Actors that die before the driver gives up replacing them (a broken setup, not a fault).
DEATHS_PER_SLOT = 3


@dataclass(frozen=True)
class RayOptions:
    address: str  # "local", "auto", "ray://host:10001" or "host:6379"
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    max_workers: int | None = None  # elastic: 0..max_workers actors, by queued work
    idle_timeout_s: float = 60.0  # elastic: an actor without work for this long leaves


def ray_installed() -> bool:
    return importlib.util.find_spec("ray") is not None


def address_problem(db: str, address: str) -> str | None:
    """Why `db` cannot serve a cluster at `address`, or None."""
    if address != LOCAL and to_url(db).startswith("sqlite"):
        return (
            f"--ray {address} needs a database every node can reach: a SQLite file cannot be "
            "shared across machines. Use PostgreSQL (--db postgresql+psycopg://user@host/db), "
            "or --ray local to use this machine only."
        )
    return None


# -- what runs inside the actors ------------------------------------------------------------


class WorkerActor:
    """One gradscope worker as a Ray actor: a `Slot` (the plain worker's claim/train loop).
    Created with max_concurrency=2, so `stop` and `busy` are served while `run` trains."""

    def __init__(self, opts: WorkerOptions, budget: Any) -> None:
        self.slot = Slot(opts, RemoteBudget(budget) if budget is not None else _unlimited(), None)

    def run(self) -> int:
        return self.slot.run()

    def stop(self, reason: str = "interrupted") -> None:
        self.slot.request_stop(reason)

    def busy(self) -> bool:
        return self.slot.busy

    def hostname(self) -> str:
        return socket.gethostname()

    def identity(self) -> str:
        """The name this actor's runs are stored under (runs.worker)."""
        return self.slot.name


class BudgetActor:
    """`--max-runs` across actors on any node: the shared counter RunBudget keeps in memory."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.value = 0

    def take(self) -> bool:
        if self.limit is not None and self.value >= self.limit:
            return False
        self.value += 1
        return True

    def adjust(self, delta: int) -> None:
        self.value += delta

    def spent(self) -> bool:
        return self.limit is not None and self.value >= self.limit


class RemoteBudget:
    """RunBudget's two methods, answered by the driver's BudgetActor (one round trip each)."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    def take(self) -> bool:
        import ray

        return bool(ray.get(self.actor.take.remote()))

    def adjust(self, delta: int) -> None:
        import ray

        ray.get(self.actor.adjust.remote(delta))


def _unlimited() -> RunBudget:
    return RunBudget(None, multiprocessing.Value("i", 0))


# -- the driver -----------------------------------------------------------------------------


class _Connection:
    """ray.init for `address`. For "local": a Ray instance already running on this machine
    when there is one (`running_local_instance`), connected to and left running; else a
    private instance in a private temp dir, shut down (and the dir removed) on close. An
    already initialised Ray (tests) is reused. `description` says which, for the driver's
    first line."""

    def __init__(self, ray: Any, address: str, cpus_needed: float) -> None:
        self.ray = ray
        self.owned = False
        self.temp_dir: str | None = None
        self.reaper: subprocess.Popen | None = None
        self.env = _ScopedEnv(reload_ray_config=True)
        self.description = address
        if ray.is_initialized():
            self.description = f"{address} (the Ray this process already runs)"
            return
        if address == LOCAL:
            running = running_local_instance()
            if running is not None and self._join(running):
                self.description = f"local: the Ray instance running at {running}, reused"
            else:
                self._start_private(cpus_needed)
                self.description = "local: a private Ray instance, started for this worker"
        else:
            _check_reachable(address)
            try:
                ray.init(address=address)
            except (ConnectionError, ValueError, RuntimeError) as exc:
                # Shown as one line by the CLI (e.g. no cluster at that address).
                raise RuntimeError(
                    f"cannot connect to Ray at {address}: {_first_line(exc)}"
                ) from exc
        self.owned = True

    def _join(self, address: str) -> bool:
        """Connect to a running local instance; False (said why) when it refuses us."""
        try:
            self.ray.init(address=address, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            log(f"ray driver: cannot use the Ray instance at {address} ({_first_line(exc)}); "
                "starting a private one")  # fmt: skip
            with contextlib.suppress(Exception):
                self.ray.shutdown()
            return False
        return True

    def _start_private(self, cpus_needed: float) -> None:
        ray = self.ray
        # Short path: Ray's unix sockets live under it (about 100 characters at most).
        self.temp_dir = tempfile.mkdtemp(prefix="gs-ray-", dir="/tmp")
        self.reaper = start_reaper(self.temp_dir)
        # Inherited by the Ray processes ray.init starts (the actors among them), so set
        # here, after the reaper started; restored on close.
        self.env.set(local_instance_env(), unset=("RAY_ADDRESS",))
        try:
            ray.init(
                # What the actors reserve, not every core: Ray starts one worker process per
                # CPU with the driver (~0.4 s of CPU each), before any actor asks for one.
                num_cpus=max(1, math.ceil(cpus_needed)),
                include_dashboard=False,
                # The driver and actors pass only options and counts through Ray's object
                # store; Ray's default reserves 30% of memory in /dev/shm.
                object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                _temp_dir=self.temp_dir,
                # Not "Started a local Ray instance.": the driver's own first line says
                # so. Ray's warnings and errors still show.
                logging_level=logging.WARNING,
            )
        except BaseException:
            self.env.restore()
            raise
        _stop_autoscaler_monitor(self.temp_dir)

    def close(self) -> None:
        if self.owned:
            self.ray.shutdown()  # for a reused instance: disconnects, the instance runs on
        self.env.restore()
        if self.temp_dir is not None:
            shutil.rmtree(self.temp_dir, ignore_errors=True)
        if self.reaper is not None:  # a clean exit: nothing left for it to clean
            self.reaper.kill()
            self.reaper.wait()


def _stop_autoscaler_monitor(temp_dir: str) -> None:
    """End the private instance's autoscaler monitor, a child of this process: one machine has
    nothing to autoscale, it takes CPU while the actors start, and on ray.shutdown it holds
    up the exit a full second (its SIGTERM handler reports to the GCS, stopped before it).
    Killed, it reports nothing; ray.shutdown then skips it. Linux (/proc) only."""
    me = os.getpid()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) != me:
                continue
            cmdline = (stat.parent / "cmdline").read_bytes().decode("utf-8", "replace")
        except (OSError, IndexError, ValueError):
            continue
        if "autoscaler/_private/monitor.py" in cmdline and temp_dir in cmdline:
            with contextlib.suppress(OSError):
                os.kill(int(stat.parent.name), signal.SIGKILL)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def running_local_instance() -> str | None:
    """The address of a Ray instance running on this machine that `--ray local` reuses, or
    None: RAY_ADDRESS when it names this machine, else the instance the last `ray start
    --head` here recorded in Ray's address file (where `ray.init()` looks too), when this
    user wrote that file. Either only if its GCS port answers: a stopped instance leaves its
    file behind. Another user's instance is never joined: the actors would run as that user,
    with this worker's database URL."""
    address = os.environ.get("RAY_ADDRESS", "").strip()
    if address in ("", "auto"):
        address = _recorded_ray_address() or ""
    host, _, port = address.rpartition(":")
    if not port.isdigit() or not _names_this_machine(address):
        return None
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=1.0):
            return address
    except OSError:
        return None


def _recorded_ray_address() -> str | None:
    # Ray's default temp dir, as ray._common.utils.get_default_ray_temp_dir finds it.
    base = os.environ.get("RAY_TMPDIR") or os.environ.get("TMPDIR") or "/tmp"
    path = os.path.join(base, "ray", "ray_current_cluster")
    try:
        if os.stat(path).st_uid != os.getuid():
            return None
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def _names_this_machine(address: str) -> bool:
    """Whether "host:port" is on this machine: its host is one this machine can bind to
    (loopback or one of its own interfaces). Not "auto" or "ray://": those mean clusters."""
    if "://" in address:
        return False
    host = address.rpartition(":")[0].strip("[]")
    if not host:
        return False
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    for family, _, _, _, sockaddr in infos:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            try:
                probe.bind((sockaddr[0], 0))
            except OSError:
                continue
            return True
    return False


def local_instance_env() -> dict[str, str]:
    """Environment for the private instance `--ray local` starts, for its processes only.

    Ray 2.60 turns token authentication on for a new local instance and says so in a warning
    (and writes a token to ~/.ray/auth_token) that a user of gradscope cannot act on. Turning
    authentication off is no answer: the instance's GCS and raylets listen on every interface,
    not only 127.0.0.1, and an unauthenticated Ray port runs anyone's code. So the instance
    gets a fresh random token of its own, through the environment its processes inherit:
    authenticated, silent, and nothing written to the user's home. A user's own RAY_AUTH_MODE
    (and token) is kept."""
    if "RAY_AUTH_MODE" in os.environ:
        return {}
    return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}


def driver_output_env() -> dict[str, str]:
    """How this driver prints the lines Ray relays from the actors (read by Ray as it prints).

    Every worker line matters (which run went where), so no folding of similar lines
    (RAY_DEDUP_LOGS); and Ray's coloured "(WorkerActor pid=...)" prefixes only on a terminal:
    in a redirected stream they are raw escape codes (RAY_COLOR_PREFIX=0 turns them off; Ray
    does not look at the stream itself). A user's own settings win."""
    env = {"RAY_DEDUP_LOGS": "0"}
    on_terminal = sys.stdout.isatty() and sys.stderr.isatty()
    if not on_terminal or os.environ.get("NO_COLOR"):
        env["RAY_COLOR_PREFIX"] = "0"
    return {k: v for k, v in env.items() if k not in os.environ}


class _ScopedEnv:
    """Environment variables set for the driver's time with Ray, then restored (they are for
    Ray's processes and printing, not for the program that runs the driver)."""

    def __init__(self, reload_ray_config: bool = False) -> None:
        self.saved: dict[str, str | None] = {}
        self.reload_ray_config = reload_ray_config

    def set(self, values: dict[str, str], unset: tuple[str, ...] = ()) -> None:
        for key, value in values.items():
            self.saved.setdefault(key, os.environ.get(key))
            os.environ[key] = value
        for key in unset:
            if key in os.environ:
                self.saved.setdefault(key, os.environ.pop(key))
        if self.reload_ray_config and (values or unset):
            _reload_ray_config()

    def restore(self) -> None:
        changed = bool(self.saved)
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self.saved.clear()
        if self.reload_ray_config and changed:
            _reload_ray_config()


def _reload_ray_config() -> None:
    """Ray reads RAY_AUTH_MODE into its config when it is imported; where that happened
    before the variables were set (an embedding program, tests), the driver would talk to its
    own authenticated instance without the token. Ray itself re-reads it the same way."""
    with contextlib.suppress(ImportError, AttributeError):
        from ray._raylet import Config

        Config.initialize("")


def _check_reachable(address: str) -> None:
    """A "host:port" where nothing answers is refused in one line within seconds; ray.init
    would retry for minutes, printing only its C++ warnings. ("auto" and "ray://" addresses
    fail quickly in ray.init itself.)"""
    if address == "auto" or "://" in address:
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        return  # malformed: ray.init says so at once
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise RuntimeError(
            f"cannot connect to Ray at {address}: nothing answers there ({reason}); start the "
            "cluster (ray start --head) or check the address"
        ) from exc


def start_reaper(temp_dir: str) -> subprocess.Popen | None:
    """A small process that outlives this driver if it is killed (kill -9 runs no cleanup):
    it then ends the Ray processes started for it and removes `temp_dir`
    (gradscope.runner.ray_reaper). None where it cannot run (no pidfd: not Linux)."""
    if not hasattr(os, "pidfd_open"):
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "gradscope.runner.ray_reaper", str(os.getpid()), temp_dir],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the driver's terminal is not for it
    )


def run_ray_workers(opts: WorkerOptions, ray_opts: RayOptions) -> int:
    """The `gradscope worker --ray` driver: returns how many runs its actors handled."""
    output_env = _ScopedEnv()
    output_env.set(driver_output_env())  # before `import ray`: some of it is read then
    try:
        return _run_ray_workers(opts, ray_opts)
    finally:
        output_env.restore()


def _run_ray_workers(opts: WorkerOptions, ray_opts: RayOptions) -> int:
    import ray

    elastic = ray_opts.max_workers is not None
    slots = ray_opts.max_workers if elastic else opts.concurrency
    assert slots is not None
    connection = _Connection(ray, ray_opts.address, slots * ray_opts.cpus_per_worker)
    stopping = threading.Event()
    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():  # (tests drive it from a thread)
        # After ray.init: it installs a SIGTERM handler of its own in the driver.
        previous = {sig: signal.signal(sig, lambda _s, _f: stopping.set()) for sig in STOP_SIGNALS}
    try:
        return _Driver(ray, opts, ray_opts, stopping, connection.description).run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        connection.close()


class _Driver:
    def __init__(
        self,
        ray: Any,
        opts: WorkerOptions,
        ray_opts: RayOptions,
        stopping: threading.Event,
        where: str | None = None,
    ) -> None:
        self.ray = ray
        self.where = where or ray_opts.address
        self.opts = opts
        self.ray_opts = ray_opts
        self.stopping = stopping
        self.elastic = ray_opts.max_workers is not None
        self.slots = ray_opts.max_workers if self.elastic else opts.concurrency
        placement: dict[str, Any] = {}
        if ray_opts.address == LOCAL:
            # "local" means this machine, also when a reused instance has other nodes (they
            # could not reach a SQLite file here).
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            node = ray.get_runtime_context().get_node_id()
            placement["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        self.actor_class = ray.remote(WorkerActor).options(
            num_cpus=ray_opts.cpus_per_worker,
            num_gpus=ray_opts.gpus_per_worker,
            max_concurrency=2,
            **placement,
        )
        self.budget = (
            ray.remote(BudgetActor).options(num_cpus=0).remote(opts.max_runs)
            if opts.max_runs is not None
            else None
        )
        self.actor_opts = replace(
            opts,
            concurrency=1,
            pool_size=ACTOR_POOL_SIZE,
            idle_exit_s=ray_opts.idle_timeout_s if self.elastic else None,
        )
        self.running: dict[Any, Any] = {}  # run() ObjectRef -> actor handle
        self.handled = 0
        self.deaths = 0
        # Recovery: elastic drivers look for lost runs; every driver settles a dead actor's.
        self.engine: Any = make_engine(opts.db, pool_size=ACTOR_POOL_SIZE)
        self.names: dict[Any, Any] = {}  # run() ObjectRef -> the actor's identity() ObjectRef

    def _start(self, count: int) -> None:
        for _ in range(count):
            actor = self.actor_class.remote(self.actor_opts, self.budget)
            ref = actor.run.remote()
            self.running[ref] = actor
            self.names[ref] = actor.identity.remote()

    def run(self) -> int:
        size = f"up to {self.slots}" if self.elastic else f"{self.slots}"
        each = f"{self.ray_opts.cpus_per_worker:g} CPU, {self.ray_opts.gpus_per_worker:g} GPU"
        log(f"ray driver: {size} worker actors on {self.where} ({each} each)")
        self._check_fits()
        if not self.elastic:
            self._start(self.slots)
        next_scale = 0.0
        recover_every = recovery_every_s(self.opts.heartbeat_s, self.opts.stale_after_s)
        next_recovery = 0.0
        try:
            while not self.stopping.is_set():
                if self.elastic and time.monotonic() >= next_scale:
                    next_scale = time.monotonic() + self.opts.poll_s
                    try:
                        if time.monotonic() >= next_recovery:
                            # With no actor alive nobody else would notice a lost run.
                            next_recovery = time.monotonic() + recover_every
                            self._recover()
                        if self._scale() and not self.running:
                            break
                    except StorageError as exc:  # transient: look again at the next tick
                        log(f"ray driver: cannot read the queue: {exc}")
                if not self.running and not self.elastic:
                    break
                self._collect(timeout=min(self.opts.poll_s, 0.5))
        finally:
            self._stop_all()
            if self.engine is not None:
                self.engine.dispose()
        return self.handled

    def _check_fits(self) -> None:
        """Warn when the cluster has no room for one actor: Ray then keeps it pending (for
        the autoscaler, if there is one) and nothing trains meanwhile."""
        total = self.ray.cluster_resources()
        for resource, need in (("CPU", self.ray_opts.cpus_per_worker),
                               ("GPU", self.ray_opts.gpus_per_worker)):  # fmt: skip
            if need > total.get(resource, 0):
                log(f"ray driver: warning: the cluster has {total.get(resource, 0):g} {resource}"
                    f" in all, a worker actor asks for {need:g}; actors wait until a node with "
                    "enough joins")  # fmt: skip

    def _collect(self, timeout: float) -> None:
        if not self.running:
            self.stopping.wait(timeout)
            return
        ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=timeout)
        for ref in ready:
            self.running.pop(ref)
            try:
                runs = self.ray.get(ref)
            except self.ray.exceptions.RayError as exc:
                self.deaths += 1
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc)
                log(f"ray driver: a worker actor died ({reason})")
                self._settle(ref)
                if self.deaths > DEATHS_PER_SLOT * self.slots:
                    raise RuntimeError(
                        f"{self.deaths} worker actors died; giving up (last: {reason})"
                    ) from exc
                if not self.elastic and not self.stopping.is_set():
                    self._start(1)  # keep --concurrency actors, as Ray would restart one
            else:
                self.handled += runs
                log(
                    f"ray driver: a worker actor left after {runs} runs, {len(self.running)} remain"
                )

    def _settle(self, ref: Any) -> None:
        """A dead actor's runs, recovered now (queued again, --retries), not once their
        heartbeat is stale: an --exit-when-idle driver may be gone by then."""
        try:
            name = self.ray.get(self.names.pop(ref), timeout=5.0)
            lost = recover_lost(
                self.engine, self.opts.stale_after_s, retries=self.opts.retries,
                dead_workers=[name],
            )  # fmt: skip
        except (self.ray.exceptions.RayError, KeyError, StorageError) as exc:
            log(f"ray driver: its runs are retried once their heartbeat is stale ({exc!r:.120})")
            return
        for run_id, outcome in lost.items():
            done = "queued again" if outcome == "queued" else "failed"
            log(f"ray driver: run {run_id} lost its worker actor: {done}")

    def _recover(self) -> None:
        assert self.engine is not None
        lost = recover_lost(self.engine, self.opts.stale_after_s, retries=self.opts.retries)
        for run_id, outcome in lost.items():
            done = "queued again" if outcome == "queued" else "failed"
            log(f"ray driver: run {run_id} lost its worker: {done}")

    def _scale(self) -> bool:
        """Elastic: start actors for queued work nobody idle will take. True when the driver
        is done (--exit-when-idle with an empty queue, or --max-runs spent)."""
        assert self.engine is not None and self.slots is not None
        demand = queued_demand(self.engine)
        spent = self.budget is not None and self.ray.get(self.budget.spent.remote())
        if spent or (self.opts.exit_when_idle and demand == 0):
            return True
        # An actor still starting (or busy answering) counts as idle: it will claim soon.
        actors = list(self.running.values())
        ready, _ = self.ray.wait([a.busy.remote() for a in actors], num_returns=len(actors),
                                 timeout=0.5) if actors else ([], [])  # fmt: skip
        busy = sum(bool(self.ray.get(r)) for r in ready)
        wanted = min(self.slots - len(actors), demand - (len(actors) - busy))
        if wanted > 0:
            log(f"ray driver: {demand} queued, starting {wanted} worker actors")
            self._start(wanted)
        return False

    def _stop_all(self) -> None:
        """Ask every actor to stop (its runs end `interrupted`), wait, then kill stragglers."""
        if not self.running:
            return
        log(f"ray driver: stopping {len(self.running)} worker actors")
        for actor in self.running.values():
            actor.stop.remote("interrupted")
        deadline = time.monotonic() + STOP_GRACE_S
        while self.running and time.monotonic() < deadline:
            ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=0.5)
            for ref in ready:
                self.running.pop(ref)
                # One that died while stopping: its runs go stale and are retried.
                with contextlib.suppress(self.ray.exceptions.RayError):
                    self.handled += self.ray.get(ref)
        for actor in self.running.values():
            log("ray driver: a worker actor did not stop in time; killed")
            self.ray.kill(actor)
        self.running.clear()
