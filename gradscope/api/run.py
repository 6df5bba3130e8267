"""A run recorded from the user's own training loop: its lifecycle in the database.

`init()` creates a running run (arch "custom") with a fresh heartbeat; a daemon thread keeps the
heartbeat fresh while the process lives, so a killed process goes stale and any worker's
recovery marks it failed ("worker lost"), as it would a built-in run. `log_epoch()` hands the
epoch to one measuring thread (gradient reductions, the one device-to-host copy, the database
write) and returns at once; `finish()` waits for it and sets the final status. Nothing here
imports torch: `import gradscope` stays cheap, and torch is loaded by `watch()`.
"""

from __future__ import annotations

import atexit
import numbers
import os
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from gradscope.db.engine import make_engine, resolve_db
from gradscope.db.epoch_writes import EpochWriter
from gradscope.db.lifecycle import heartbeat
from gradscope.db.user_runs import create_custom_run, describe_model
from gradscope.vocab.custom import model_summary, user_config
from gradscope.vocab.fields import EPOCH_FIELDS, MAX_NAME_CHARS
from gradscope.vocab.records import EpochRecord, FinalMetrics
from gradscope.vocab.text import has_unsafe_chars

if TYPE_CHECKING:
    from gradscope.api.watch import EpochPart, Watcher

HEARTBEAT_S = 2.0  # a worker marks a run lost after 60 s without one (gradscope.runner.worker)

_active: set[Run] = set()
_uncaught: list[BaseException] = []
_hooked = False


def init(
    db: str | None = None,
    name: str | None = None,
    config: dict[str, Any] | None = None,
    *,
    heartbeat_s: float = HEARTBEAT_S,
) -> Run:
    """Start recording a run into `db` (a SQLite path or a database URL; default as the CLI:
    $GRADSCOPE_DB, else ./gradscope.db). `config` is any JSON-able dict (at most 8,000
    characters as JSON), kept with the run; its "seed", when an integer, is the run's seed."""
    if name is not None and (len(name) > MAX_NAME_CHARS or has_unsafe_chars(name)):
        raise ValueError(f"name must be at most {MAX_NAME_CHARS} printable characters")
    user = user_config(config)
    _install_exit_hooks()
    seed = user.get("seed")
    engine = make_engine(resolve_db(db), create=True)
    worker = f"{socket.gethostname()}:{os.getpid()} (gradscope.init)"[:200]
    run_id = create_custom_run(
        engine,
        name=name,
        config={"user": user, "model": {}},
        seed=seed if type(seed) is int and abs(seed) < 2**31 else 0,
        worker=worker,
        torch_version=_torch_version(),
    )
    return Run(engine, run_id, name, user, worker, heartbeat_s)


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
        self._store = EpochWriter(engine)
        self._user = user
        self._worker = worker
        self._watcher: Watcher | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradscope-measure")
        self._pending: list[Future[None]] = []
        self._epochs = 0
        self._last_metrics: dict[str, float] = {}
        self._diverged: str | None = None
        self._status: str | None = None  # set once finished
        self._lost = False  # another process marked the run lost: stop writing
        self._cancel = False  # someone asked to cancel it (dashboard, `gradscope cancel`)
        self._epoch_started = time.perf_counter()
        self._stop = threading.Event()
        self._beat = threading.Thread(
            target=self._heartbeats, args=(heartbeat_s,), name="gradscope-heartbeat", daemon=True
        )
        self._beat.start()
        _active.add(self)

    # -- the user's calls -------------------------------------------------------------------
    def watch(self, model: Any, optimizer: Any, probe: Any = None) -> Run:
        """Measure every `optimizer.step()` of `model`'s trainable weights (any module with a
        weight: Linear, Conv, Embedding, norms, RNN...). `probe`, an input batch, is run
        through the model at each log_epoch for activation health and prediction spread
        (a tuple is passed as `model(*probe)`, a dict as `model(**probe)`)."""
        self._check_open()
        import torch

        from gradscope.api.watch import Watcher, unwrap

        if self._watcher is not None:
            self._watcher.remove()
        watcher = Watcher(model, optimizer, self._pool, probe)
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

    def log_epoch(
        self,
        train_loss: Any = None,
        train_acc: Any = None,
        test_loss: Any = None,
        test_acc: Any = None,
    ) -> None:
        """Close an epoch: its statistics since the previous call and the given metrics (each
        optional: numbers or 0-d tensors, read on the measuring thread, so a CUDA loss costs
        this thread no sync). A non-finite loss or statistic marks the run diverged; training
        goes on (check `run.diverged` to stop)."""
        self._check_open()
        self._raise_failed()
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
        job = self._pool.submit(self._record, epoch, given, seconds, part, layers)
        self._pending.append(job)

    @property
    def diverged(self) -> bool:
        """True once a logged loss or a statistic became non-finite (waits for the epochs
        logged so far to be measured)."""
        self._wait()
        return self._diverged is not None

    @property
    def cancel_requested(self) -> bool:
        """True once someone asked to cancel this run (the dashboard, `gradscope cancel`),
        as learnt by the heartbeat. Your loop decides: `if run.cancel_requested: break`."""
        return self._cancel

    @property
    def status(self) -> str:
        return self._status or "running"

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
    ) -> None:
        stats: list[dict[str, float | bytes | None]] = []
        pred_std: float | None = None
        if part is not None:
            from gradscope.api.measure import epoch_layer_stats

            stats, pred_std = epoch_layer_stats(layers, part)
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
        if self._lost:
            return
        record = EpochRecord(epoch, {k: metrics.get(k) for k in EPOCH_FIELDS}, stats)
        self._store.record_epoch(self.id, record, epochs_total=epoch)  # type: ignore[arg-type]
        self._last_metrics = {k: v for k, v in metrics.items() if v is not None}

    # -- lifecycle --------------------------------------------------------------------------
    def _heartbeats(self, every_s: float) -> None:
        while not self._stop.wait(every_s) and self._beat_once():
            pass

    def _beat_once(self) -> bool:
        """One heartbeat; learns of cancel requests and of the run being taken away (marked
        lost). Returns False when there is nothing more to beat for."""
        try:
            beat = heartbeat(self.engine, [self.id], self._worker)[self.id]
        except Exception as exc:  # noqa: BLE001 - a missed beat is retried next time
            print(f"gradscope: heartbeat failed: {exc}", file=sys.stderr)
            return True
        self._cancel = self._cancel or beat.cancel_requested
        if not beat.owned:
            self._lost = True
            print(
                f"gradscope: run {self.id[:8]} was marked lost or finished elsewhere; "
                "no more epochs are recorded",
                file=sys.stderr,
            )
            return False
        return True

    def _wait(self) -> None:
        """Wait for every logged epoch to be recorded; re-raise the first error."""
        while self._pending:
            self._pending.pop(0).result()

    def _raise_failed(self) -> None:
        """Re-raise a finished measurement's error now, not only at finish()."""
        for job in [j for j in self._pending if j.done()]:
            self._pending.remove(job)
            job.result()

    def _check_open(self) -> None:
        if self._status is not None:
            raise RuntimeError(f"run {self.id[:8]} has finished ({self._status})")

    def _close(self, status: str, error: str | None = None, *, quiet: bool = False) -> str:
        if self._status is not None:
            return self._status
        failure: BaseException | None = None
        try:
            self._wait()
        except BaseException as exc:  # noqa: BLE001 - the run is failed with it, then re-raised
            failure = exc
            if status == "completed":
                status, error = "failed", f"recording failed: {type(exc).__name__}: {exc}"
        if self._watcher is not None:
            self._watcher.remove()
        self._stop.set()
        self._pool.shutdown(wait=True, cancel_futures=True)
        if status == "completed" and self._diverged is not None:
            status, error = "diverged", self._diverged
        self._status = status
        _active.discard(self)
        if not self._lost:
            self._store.finish_run(
                self.id, status, final=FinalMetrics.from_metrics(self._last_metrics), error=error
            )
        self._beat.join(timeout=5)
        if failure is not None and not quiet:
            raise failure
        return status


def _metric(name: str, value: Any) -> Any:
    """A metric as handed in, checked now (a bad one is the caller's error, raised here, not
    on the measuring thread): None, a real number, or a one-element tensor (detached; read
    later, off this thread)."""
    if value is None or isinstance(value, numbers.Real):
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


def _install_exit_hooks() -> None:
    """Once per process, at the first init() (not at import: importing has no side effects)."""
    global _hooked
    if not _hooked:
        _hooked = True
        sys.excepthook = _excepthook(sys.excepthook)
        atexit.register(_at_exit)
