"""`gradscope train`: create a run and train it in this process with a progress bar."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

import torch
from sqlalchemy import Engine

from gradscope.db import lifecycle
from gradscope.db.epoch_writes import EpochWriter
from gradscope.runner.execute import execute_run
from gradscope.runner.heartbeat import Heartbeat
from gradscope.vocab.config import RunConfig, make_config, with_absolute_csv
from gradscope.vocab.csv_files import precheck
from gradscope.vocab.protocol import HEARTBEAT_S, worker_identity
from gradscope.vocab.records import EpochRecord, RunSpec


@contextmanager
def first_ctrl_c_stops() -> Iterator[Callable[[], bool]]:
    """Turn the first Ctrl-C into a clean stop (the run ends `interrupted`, epochs kept): yields
    a check that says whether it came. A second Ctrl-C interrupts at once. Only the main
    thread can handle signals; elsewhere Ctrl-C keeps its usual meaning."""
    pressed = threading.Event()

    def on_sigint(_signum: int, _frame: FrameType | None) -> None:
        if pressed.is_set():
            raise KeyboardInterrupt
        pressed.set()

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield pressed.is_set
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _say(message: str) -> None:
    print(f"gradscope: {message}", file=sys.stderr)


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
    engine: Engine,
    values: dict[str, str],
    progress: bool = True,
    *,
    heartbeat_s: float = HEARTBEAT_S,
) -> tuple[str, str]:
    """Validate, create and train one run here; returns (run id, final status).

    An invalid config, or a CSV file that is missing or wrong (header and first rows checked),
    raises ConfigError before anything is written. While it trains, the heartbeat keeps the
    run fresh (workers on the same database don't mark it lost) and notices `gradscope cancel`;
    should a worker mark it lost anyway (a stall past the stale limit), training stops at its
    next check and nothing more is written: its epochs and status stay as that worker left them.
    """
    cfg = checked_config(values)
    worker = worker_identity("foreground")
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
    # Writes guarded by the worker name: once the run is lost, an epoch in flight writes nothing.
    store = EpochWriter(engine, worker=worker)
    with (
        Heartbeat(engine, worker, [run_id], every_s=heartbeat_s, say=_say) as beat,
        first_ctrl_c_stops() as ctrl_c,
    ):

        def should_stop() -> str | None:
            return "interrupted" if ctrl_c() else beat.should_stop()

        if not progress:
            return run_id, execute_run(store, run_id, cfg, should_stop).status

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

            result = execute_run(store, run_id, cfg, should_stop, on_epoch=show)
    return run_id, result.status
