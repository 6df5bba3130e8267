"""`gradscope train`: create a run and train it in this process with a progress bar."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType, TracebackType

import torch
from sqlalchemy import Engine

from gradscope.db import lifecycle
from gradscope.db.epoch_writes import EpochWriter
from gradscope.db.errors import StorageError
from gradscope.runner.execute import execute_run
from gradscope.vocab.config import RunConfig, make_config, with_absolute_csv
from gradscope.vocab.csv_files import precheck
from gradscope.vocab.records import EpochRecord, RunSpec

# Well inside a worker's default --stale-after (60 s): a long epoch never looks like a lost run.
HEARTBEAT_S = 5.0


class RunWatch:
    """While a foreground run trains: heartbeats it (so workers on the same database don't
    mark it lost), notices `gradscope cancel`, and turns the first Ctrl-C into a clean stop
    (`interrupted`, epochs kept); a second Ctrl-C interrupts at once."""

    def __init__(
        self, engine: Engine, run_id: str, worker: str, every_s: float = HEARTBEAT_S
    ) -> None:
        self._engine, self._run_id, self._worker, self._every_s = engine, run_id, worker, every_s
        self._done = threading.Event()
        self._cancelled = threading.Event()
        self._interrupted = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="gradscope-heartbeat", daemon=True)
        self._previous_sigint: Callable | int | None = None

    def should_stop(self) -> str | None:
        if self._interrupted.is_set():
            return "interrupted"
        return "cancelled" if self._cancelled.is_set() else None

    def _beat(self) -> None:
        while not self._done.wait(self._every_s):
            try:
                beat = lifecycle.heartbeat(self._engine, [self._run_id], self._worker)
                if beat[self._run_id].cancel_requested:
                    self._cancelled.set()
            except StorageError:
                pass  # a database in trouble shows up in the next epoch's write, with context

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self._interrupted.is_set():
            raise KeyboardInterrupt
        self._interrupted.set()

    def __enter__(self) -> RunWatch:
        self._thread.start()
        if threading.current_thread() is threading.main_thread():
            self._previous_sigint = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._done.set()
        self._thread.join()
        if self._previous_sigint is not None:
            signal.signal(signal.SIGINT, self._previous_sigint)


def _device_name(requested: str) -> str:
    """The device a run will train on, as reference_loop names it ("auto" resolved)."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def checked_config(values: dict[str, str]) -> RunConfig:
    """The validated config with its CSV file pre-checked (ConfigError otherwise), relative
    CSV paths made absolute. Call it before opening the database: a refused run writes nothing."""
    cfg = make_config(values)
    precheck(cfg)
    return with_absolute_csv(cfg)


def train_foreground(
    engine: Engine, values: dict[str, str], progress: bool = True
) -> tuple[str, str]:
    """Validate, create and train one run here; returns (run id, final status).

    An invalid config, or a CSV file that is missing or wrong (header and first rows checked),
    raises ConfigError before anything is written.
    """
    cfg = checked_config(values)
    worker = f"{socket.gethostname()}:{os.getpid()} (foreground)"
    # The runs row is written once before epoch 1: inserted running, with who trains it where
    # (execute_run's own runtime write then finds nothing to change).
    runtime = lifecycle.Runtime(
        worker=worker,
        device=_device_name(cfg.device),
        torch_version=torch.__version__,
    )
    [run_id] = lifecycle.create_runs(
        engine, [RunSpec(cfg.model_dump())], status="running", runtime=runtime
    )
    store = EpochWriter(engine)
    with RunWatch(engine, run_id, worker) as watch:
        if not progress:
            return run_id, execute_run(store, run_id, cfg, watch.should_stop).status

        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=Console(stderr=True),  # stdout carries only the run id
        ) as bar:
            task = bar.add_task(
                f"{cfg.arch} d{cfg.depth} {run_id[:8]}", total=cfg.epochs, metrics=""
            )

            def show(record: EpochRecord) -> None:
                m = record.metrics
                bar.update(
                    task,
                    completed=record.epoch,
                    metrics=f"loss {m['train_loss']:.4f}  acc {m['train_acc']:.3f}  "
                    f"test acc {m['test_acc']:.3f}",
                )

            result = execute_run(store, run_id, cfg, watch.should_stop, on_epoch=show)
    return run_id, result.status
