"""A run recorded from the user's own training loop: its lifecycle in the database.

`init()` creates a running run (arch "custom") with a fresh heartbeat; the heartbeat thread
(gradscope.runner.heartbeat.Heartbeat, the one workers use) keeps it fresh while the process
lives, so a killed process goes stale and any worker's recovery marks it failed ("worker lost"),
as it would a built-in run. A run marked lost while alive (a stall past the stale limit) records
nothing more: its epochs and status stay as the recovery left them. `log_epoch()` hands the
epoch to one measuring thread (gradient reductions, the one device-to-host copy, the database
write) and returns at once; `finish()` waits for it and sets the final status. Nothing here
imports torch: `import gradscope` stays cheap, and torch is loaded by `watch()`.
"""

from __future__ import annotations

import atexit
import numbers
import os
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from gradscope.api.distributed import SilentRun, job_config, job_rank, refuse_sharded
from gradscope.api.live import LiveWarnings
from gradscope.api.logged import FLUSH_ROWS, MetricLog, Row, resolve
from gradscope.db.engine import make_engine, resolve_db
from gradscope.db.epoch_writes import EpochWriter
from gradscope.db.errors import NotFoundError
from gradscope.db.user_runs import create_custom_run, describe_model
from gradscope.runner.heartbeat import Heartbeat
from gradscope.vocab.custom import model_summary, user_config
from gradscope.vocab.fields import EPOCH_FIELDS
from gradscope.vocab.metrics import check_step
from gradscope.vocab.protocol import (
    DB_ENV,
    HEARTBEAT_S,
    QUIET_ENV,
    heartbeat_problem,
    worker_identity,
)
from gradscope.vocab.records import EpochRecord, FinalMetrics
from gradscope.vocab.stored_values import clean_name, metric_problem

if TYPE_CHECKING:
    from gradscope.api.watch import EpochPart, Watcher

_active: set[Run] = set()
_uncaught: list[BaseException] = []
_hooked = False


def init(
    db: str | None = None,
    name: str | None = None,
    config: dict[str, Any] | None = None,
    *,
    quiet: bool | None = None,
    heartbeat_s: float = HEARTBEAT_S,
) -> Run:
    """Start recording a run into `db` (a SQLite path or a database URL; default as the CLI:
    $GRADSCOPE_DB, else ./gradscope.db). `config` is any JSON-able dict (at most 8,000
    characters as JSON), kept with the run; its "seed", when an integer, is the run's seed.
    Prints one line on stderr with the run's id and where to look, unless `quiet` (default:
    quiet when the environment variable GRADSCOPE_QUIET is 1)."""
    # The rules every stored value follows (import checks the same ones).
    name = clean_name(name)
    problem = heartbeat_problem(heartbeat_s)
    if problem:
        raise ValueError(problem)
    user = user_config(config)
    # One run per training job: rank 0 records it, the others get a run that does nothing
    # (under DDP their gradients equal rank 0's: gradscope.api.distributed).
    rank, world, backend = job_rank()
    if rank != 0:
        return SilentRun(rank, world, name)  # type: ignore[return-value]
    if world > 1 and "distributed" not in user:
        user = {**user, "distributed": job_config(rank, world, backend)}
    _install_exit_hooks()
    seed = user.get("seed")
    engine = make_engine(resolve_db(db), create=True)
    worker = worker_identity("gradscope.init")
    run_id = create_custom_run(
        engine,
        name=name,
        config={"user": user, "model": {}},
        seed=seed if type(seed) is int and abs(seed) < 2**31 else None,  # no seed: NULL
        worker=worker,
        torch_version=_torch_version(),
    )
    run = Run(engine, run_id, name, user, worker, heartbeat_s)
    if quiet is None:
        quiet = os.environ.get(QUIET_ENV, "").strip().lower() in ("1", "true", "yes")
    if not quiet:
        _say(_announcement(run, db))
    from gradscope.api.notebook import watch_cells

    watch_cells()  # in IPython/Jupyter: a cell that raises fails the open runs
    return run


def _announcement(run: Run, db: str | None) -> str:
    """One line: the run, where it is stored, and the commands that show it."""
    where = resolve_db(db)
    shown = "" if db is None and not os.environ.get(DB_ENV) else f" --db {where}"
    label = f" ({run.name})" if run.name else ""
    return (
        f"run {run.id}{label} recording to {where}; see it with: "
        f"gradscope show {run.id[:8]}{shown}  or  gradscope dashboard{shown}"
    )


def _torch_version() -> str:
    torch = sys.modules.get("torch")  # not imported just for this
    return str(getattr(torch, "__version__", "")) if torch is not None else ""


class Run:
    """One recorded run. Use as `with gradscope.init(...) as run:` or call `finish()`."""

    def __init__(
        self,
        engine: Engine,
        run_id: str,
        name: str | None,
        user: dict[str, Any],
        worker: str,
        heartbeat_s: float,
    ) -> None:
        self.id = run_id
        self.name = name
        self.engine = engine
        # Writes guarded by the worker name: once the run is lost, nothing more is written.
        self._store = EpochWriter(engine, worker=worker)
        self._user = user
        self._watcher: Watcher | None = None
        self._metrics = MetricLog()
        self._log_calls = 0  # run.log calls: the default step of a run that watches nothing
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradscope-measure")
        # Gradient spikes found while training (gradscope.analysis.spikes), stored as they come.
        self._live = LiveWarnings(engine, run_id, self._pool)
        self._pending: list[Future[None]] = []
        self._epochs = 0
        self._last_metrics: dict[str, float] = {}
        self._diverged: str | None = None
        self._status: str | None = None  # set once finished
        self._epoch_started = time.perf_counter()
        # The run belongs to the process that created it: after os.fork() a child has no
        # measuring or heartbeat thread, so it neither records nor finishes it.
        self._pid = os.getpid()
        self._heartbeat = Heartbeat(engine, worker, [run_id], every_s=heartbeat_s, say=_say)
        self._heartbeat.start()
        _active.add(self)

    # -- the user's calls -------------------------------------------------------------------
    def watch(
        self,
        model: Any,
        optimizer: Any,
        probe: Any = None,
        on_warning: Callable[[Any], Any] | None = None,
        *,
        every: int = 1,
        time_dim: int | None = None,
        loss_fn: Callable[[Any, Any], Any] | None = None,
        low_memory: bool | None = None,
    ) -> Run:
        """Measure the optimizer steps of `model`'s trainable weights (any module with a
        weight: Linear, Conv, Embedding, norms, RNN...). `optimizer` is one optimizer or a
        list of them (e.g. one per part of the model); each weight is measured at the steps
        of the optimizer that updates it. Calling watch() again with the same model adds its
        optimizers (the epoch in progress restarts its statistics). `every=N` measures every
        N-th step only (1, the default: every step); an epoch's statistics are then over its
        measured steps (docs/recorded.md). `probe`, an input batch, is run
        through the model at each log_epoch for activation health and prediction spread
        (a tuple is passed as `model(*probe)`, a dict as `model(**probe)`); `probe=(x, y)`
        for a model that takes one input hands labels too, so accuracy is judged against
        the labels' chance level (their majority rate) and collapse by predicted classes.
        `on_warning(w)` is called with each live warning (a gradient spike: w.kind, w.step,
        w.layer, w.factor) on the thread that found it; `run.warnings` lists them.
        `time_dim` (a recurrent model's probe of sequences: its time axis, e.g. 1 for
        batch_first): at each log_epoch, the norm of the gradient of `loss_fn(model(x), y)`
        (default: the sum of the outputs) reaching each time step of the probe, which weight
        gradients cannot show (gradscope.api.through_time; costs one forward and backward
        pass of the probe per epoch); kept as the metric "time_grad/log10_first_over_last"
        and read by the diagnosis. `low_memory=True` keeps 4 bytes per weight instead of 8
        (no copy of the last step's gradient: each step is reduced and binned on the training
        thread, the same statistics; on a CPU that makes a watched step slower: ~85 ms a step
        for 27.3M weights on one thread); None, the default, does so for models of 16M weights
        and more on a CPU, 4M on accelerators; False never (docs/python-api.md, Memory)."""
        self._check_open()
        if low_memory is not None and not isinstance(low_memory, bool):
            raise ValueError(f"low_memory must be True, False or None, got {low_memory!r}")
        import torch

        from gradscope.api.watch import Watcher, unwrap

        refuse_sharded(model)  # FSDP: a clear error, not statistics of one rank's shard
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        optimizers = list(optimizer) if isinstance(optimizer, Sequence) else [optimizer]
        if not optimizers:
            raise ValueError("watch() needs an optimizer (or a list of them)")
        steps_before = 0
        if self._watcher is not None:
            if self._watcher.model is not model:
                raise ValueError(
                    "this run already watches another model; watch one module that holds "
                    "both (e.g. nn.ModuleDict({'g': g, 'd': d})) with both optimizers"
                )
            optimizers = [
                *[o for o in self._watcher.optimizers if all(o is not n for n in optimizers)],
                *optimizers,
            ]
            steps_before = self._watcher.total_steps
            self._watcher.remove()
        watcher = Watcher(
            model,
            optimizers,
            self._pool,
            probe,
            self._live.add,
            every=every,
            time_dim=_time_dim(time_dim),
            loss_fn=loss_fn,
            low_memory=low_memory,
        )
        watcher.total_steps = watcher._base = steps_before  # run.step goes on counting
        self._live.callback = on_warning
        if not watcher.layers:
            watcher.remove()
            raise ValueError("the model has no trainable weight to watch (all frozen?)")
        infos = [layer.info for layer in watcher.layers]
        devices = sorted({str(layer.param.device) for layer in watcher.layers})
        parameters = sum(p.numel() for p in unwrap(model).parameters())
        summary = model_summary(
            [f"{i.name}: {i.kind} {i.shape}" for i in infos],
            parameters,
            torch.__version__,
            ",".join(devices),
        )
        describe_model(
            self.engine,
            self.id,
            config={"user": self._user, "model": summary},
            layers=infos,
            width=max(i.fan_out for i in infos),
            device=",".join(devices),
        )
        self._store.set_runtime(
            self.id, device=",".join(devices)[:64], torch_version=torch.__version__
        )
        self._watcher = watcher
        return self

    @property
    def step(self) -> int:
        """The step `log()` uses by default: the optimizer steps taken so far (all watched
        optimizers' steps, measured or not), or, watching nothing, the earlier log() calls."""
        if self._watcher is not None:
            return self._watcher.total_steps
        return self._log_calls

    def log(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Log named scalars, e.g. `run.log({"train/loss": loss, "lr": lr})`: numbers or
        one-element tensors (read later on the measuring thread: no sync here). Each value is
        kept with its step (default `run.step`) and the epoch in progress (the one the next
        log_epoch closes): log every step for a per-step curve, or once per epoch, before
        log_epoch, for a per-epoch one. NaN and infinities are kept as such. Names: 1-100
        printable characters; train/test pairs ("train/loss" & "test/loss", "train_acc" &
        "val_acc") share a chart. Limits: gradscope.vocab.metrics."""
        self._check_open()
        self._check_owner()
        at = self.step if step is None else check_step(step)
        self._metrics.add(metrics, at, self._epochs + 1)
        self._log_calls += 1
        if len(self._metrics.pending) >= FLUSH_ROWS:
            self._raise_failed()
            self._pending.append(self._pool.submit(self._write_metrics, self._metrics.take()))

    def log_epoch(
        self,
        train_loss: Any = None,
        train_acc: Any = None,
        test_loss: Any = None,
        test_acc: Any = None,
        **metrics: Any,
    ) -> None:
        """Close an epoch: its statistics since the previous call and the given metrics (each
        optional: numbers or 0-d tensors, read on the measuring thread, so a CUDA loss costs
        this thread no sync). Any other keyword is a free metric of this epoch, as
        `run.log({...})` just before (e.g. `log_epoch(train_loss=l, lr=0.1)`). A non-finite
        loss or statistic marks the run diverged; training goes on (check `run.diverged`)."""
        self._check_open()
        self._check_owner()
        self._raise_failed()
        if metrics:
            self._metrics.add(metrics, self.step, self._epochs + 1)
        given = {
            "train_loss": _metric("train_loss", train_loss),
            "train_acc": _metric("train_acc", train_acc),
            "test_loss": _metric("test_loss", test_loss),
            "test_acc": _metric("test_acc", test_acc),
        }
        now = time.perf_counter()
        seconds, self._epoch_started = now - self._epoch_started, now
        self._epochs += 1
        epoch = self._epochs
        part = self._watcher.end_epoch() if self._watcher is not None else None
        layers = self._watcher.layers if self._watcher is not None else []
        if part is not None and part.time_norms is not None:  # read later, as any metric
            from gradscope.api.through_time import TIME_METRIC, log10_first_over_last

            ratio = log10_first_over_last(part.time_norms)
            self._metrics.add({TIME_METRIC: ratio}, self.step, epoch)
        logged = self._metrics.take()
        job = self._pool.submit(self._record, epoch, given, seconds, part, layers, logged)
        self._pending.append(job)

    @property
    def diverged(self) -> bool:
        """True once a logged loss or a statistic became non-finite (waits for the epochs
        logged so far to be measured)."""
        self._wait()
        return self._diverged is not None

    @property
    def warnings(self) -> list[Any]:
        """The live warnings found so far (gradscope.analysis.spikes.Warning_: kind "spike",
        "growth" or "nonfinite", epoch, step (the optimizer step over the run, as run.step
        counted it, also with every=N), layer, value, baseline, factor, message), without
        waiting for the measuring thread: a loop may stop, skip or roll back on them."""
        return self._live.snapshot()

    @property
    def cancel_requested(self) -> bool:
        """True once someone asked to cancel this run (the dashboard, `gradscope cancel`),
        as learnt by the heartbeat. Your loop decides: `if run.cancel_requested: break`."""
        return self._heartbeat.cancelled(self.id)

    @property
    def lost(self) -> bool:
        """True once another process marked this run lost (this one stalled past the stale
        limit) or finished it: nothing more is recorded. Your loop may stop: `if run.lost`."""
        return self._heartbeat.lost(self.id)

    @property
    def status(self) -> str:
        return self._status or "running"

    def __repr__(self) -> str:
        name = f" name={self.name!r}" if self.name else ""
        return f"<gradscope.Run id={self.id}{name} status={self.status}>"

    def finish(self) -> str:
        """End the run: completed (diverged if it did). A second call does nothing. Returns
        the final status."""
        return self._close("completed")

    def __enter__(self) -> Run:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self._close("completed")
        elif isinstance(exc, KeyboardInterrupt):
            self._close("interrupted", "interrupted (KeyboardInterrupt)", quiet=True)
        else:
            self._close("failed", f"{type(exc).__name__}: {exc}", quiet=True)

    # -- the measuring thread ---------------------------------------------------------------
    def _record(
        self,
        epoch: int,
        given: dict[str, Any],
        seconds: float,
        part: EpochPart | None,
        layers: list,
        logged: list[Row] | None = None,
    ) -> None:
        self._write_metrics(logged or [])
        stats: list[dict[str, float | bytes | None]] = []
        pred_std: float | None = None
        if part is not None:
            from gradscope.api.measure import epoch_layer_stats

            stats, pred_std, extra = epoch_layer_stats(layers, part)
        else:
            extra = {}
        metrics: dict[str, float | None] = {
            k: (None if v is None else float(v)) for k, v in given.items()
        }
        metrics["pred_std"] = pred_std
        metrics["seconds"] = seconds
        from gradscope.runner.gradient_stats import (
            divergence,  # torch: a run that logs epochs has a model
        )

        reason = divergence(epoch, metrics, stats)
        if reason and self._diverged is None:
            self._diverged = reason
        if self.lost:
            return
        moment = {k: v for k, v in extra.items() if k == "first_nonfinite_step"}
        record = EpochRecord(epoch, {**{k: metrics.get(k) for k in EPOCH_FIELDS}, **moment}, stats)
        if self._watcher is not None:  # contents, backward order, the probe's outcome
            probe = {k[6:]: v for k, v in extra.items() if k.startswith("probe_")}
            facts = {**self._watcher.lookout.facts(), "probe": probe}
            if part is not None and part.time_norms is not None:
                from gradscope.api.through_time import TIME_FACTS, time_summary

                norms = part.time_norms.cpu().tolist()  # one copy per epoch
                facts[TIME_FACTS] = time_summary(norms, self._watcher.time_dim or 0, epoch)
            self._live.facts(facts)
        try:
            self._store.record_epoch(self.id, record, epochs_total=epoch)  # type: ignore[arg-type]
        except NotFoundError:
            # Lost (or deleted) before the heartbeat noticed: the guarded write wrote nothing,
            # and the next beat says so.
            return
        self._last_metrics = {k: v for k, v in metrics.items() if v is not None}

    def _write_metrics(self, rows: list[Row]) -> None:
        """Free metrics, read (the tensors' one copy per device) and written; nothing once the
        run is lost."""
        if not rows or self.lost:
            return
        try:
            self._store.record_metrics(self.id, resolve(rows))
        except NotFoundError:
            return  # lost or deleted: the guarded write wrote nothing

    # -- lifecycle --------------------------------------------------------------------------
    def _wait(self) -> None:
        """Wait for every logged epoch to be recorded; re-raise the first error."""
        if not self._owned():
            return  # a forked child: the measuring thread (and its futures) stayed behind
        while self._pending:
            self._pending.pop(0).result()

    def _raise_failed(self) -> None:
        """Re-raise a finished measurement's error now, not only at finish()."""
        for job in [j for j in self._pending if j.done()]:
            self._pending.remove(job)
            job.result()

    def _owned(self) -> bool:
        return os.getpid() == self._pid

    def _check_owner(self) -> None:
        if not self._owned():
            raise RuntimeError(
                f"run {self.id[:8]} belongs to process {self._pid}, which created it; this "
                f"process ({os.getpid()}) was forked from it and cannot record into it: call "
                "gradscope.init() in this process for a run of its own"
            )

    def _check_open(self) -> None:
        if self._status is not None:
            raise RuntimeError(f"run {self.id[:8]} has finished ({self._status})")

    def _close(self, status: str, error: str | None = None, *, quiet: bool = False) -> str:
        if self._status is not None:
            return self._status
        if not self._owned():
            # A forked child leaving `with` or calling finish(): the parent still trains.
            warnings.warn(
                f"gradscope: run {self.id[:8]} belongs to process {self._pid}; this forked "
                "child leaves it unfinished (the parent finishes it)",
                RuntimeWarning,
                stacklevel=3,
            )
            return "running"
        failure: BaseException | None = None
        if self._metrics.pending:  # logged after the last epoch: the epoch in progress's
            self._pending.append(self._pool.submit(self._write_metrics, self._metrics.take()))
        try:
            self._wait()
        except BaseException as exc:  # noqa: BLE001 - the run is failed with it, then re-raised
            failure = exc
            if status == "completed":
                status, error = "failed", f"recording failed: {type(exc).__name__}: {exc}"
        if self._watcher is not None:
            self._watcher.remove()
        self._heartbeat.stop()
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._live.stopped = self.lost  # a lost run's rows stay as the recovery left them
        self._live.flush()  # warnings found since the last flush job
        if status == "completed" and self._diverged is not None:
            status, error = "diverged", self._diverged
        self._status = status
        _active.discard(self)
        # Guarded by the worker name: a lost run's stored status is not overwritten.
        self._store.finish_run(
            self.id, status, final=FinalMetrics.from_metrics(self._last_metrics), error=error
        )
        if failure is not None and not quiet:
            raise failure
        return status


def _say(message: str) -> None:
    print(f"gradscope: {message}", file=sys.stderr)


def _metric(name: str, value: Any) -> Any:
    """A metric as handed in, checked now (a bad one is the caller's error, raised here, not
    on the measuring thread): None, a real number, or a one-element tensor (detached; read
    later, off this thread)."""
    if value is None or isinstance(value, numbers.Real):
        problem = metric_problem(name, float(value)) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value
    if hasattr(value, "detach") and hasattr(value, "numel"):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a number or a one-element tensor")
        return value.detach()
    raise TypeError(f"{name} must be a number or a one-element tensor, got {type(value).__name__}")


# -- a run the script never finished ----------------------------------------------------------
def _excepthook(previous: Callable[..., None]) -> Callable[..., None]:
    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        _uncaught.append(exc)
        previous(kind, exc, tb)

    return hook


def _at_exit() -> None:
    """Finish runs left open: failed (or interrupted) after an uncaught exception, else
    completed, as a script that ends without finish() means it."""
    exc = _uncaught[-1] if _uncaught else None
    for run in list(_active):
        if exc is None:
            run._close("completed", quiet=True)
        elif isinstance(exc, KeyboardInterrupt):
            run._close("interrupted", "interrupted (KeyboardInterrupt)", quiet=True)
        else:
            run._close("failed", f"{type(exc).__name__}: {exc}", quiet=True)


def _forget_in_child() -> None:
    """After os.fork(), in the child: the parent's runs are not this process's to finish at
    exit, and their pooled connections are the parent's (closing a PostgreSQL one here would
    end the parent's session)."""
    for run in list(_active):
        run.engine.dispose(close=False)
    _active.clear()


def _install_exit_hooks() -> None:
    """Once per process, at the first init() (not at import: importing has no side effects)."""
    global _hooked
    if not _hooked:
        _hooked = True
        sys.excepthook = _excepthook(sys.excepthook)
        atexit.register(_at_exit)
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=_forget_in_child)


def _time_dim(time_dim: object) -> int | None:
    if time_dim is None:
        return None
    if isinstance(time_dim, bool) or not isinstance(time_dim, int):
        raise ValueError(f"time_dim must be an integer (the probe's time axis), got {time_dim!r}")
    return time_dim
