"""`gradscope train`: create a run and train it in this process with a progress bar."""

from __future__ import annotations

import os
import socket

from sqlalchemy import Engine

from db.records import EpochRecord, RunSpec
from db.store import RunStore
from runner.config import make_config
from runner.execute import execute_run


def train_foreground(
    engine: Engine, values: dict[str, str], progress: bool = True
) -> tuple[str, str]:
    """Validate, create and train one run here; returns (run id, final status).

    An invalid config raises ConfigError before anything is written.
    """
    cfg = make_config(values)
    store = RunStore(engine)
    run_id = store.create_run(RunSpec(cfg.model_dump()), status="running")
    store.mark_running(
        run_id,
        worker=f"{socket.gethostname()}:{os.getpid()} (foreground)",
        device=cfg.device,
        torch_version="",
    )
    if not progress:
        return run_id, execute_run(store, run_id, cfg).status

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[metrics]}"),
    ) as bar:
        task = bar.add_task(f"{cfg.arch} d{cfg.depth} {run_id[:8]}", total=cfg.epochs, metrics="")

        def show(record: EpochRecord) -> None:
            m = record.metrics
            bar.update(
                task,
                completed=record.epoch,
                metrics=f"loss {m['train_loss']:.4f}  acc {m['train_acc']:.3f}  "
                f"test acc {m['test_acc']:.3f}",
            )

        result = execute_run(store, run_id, cfg, on_epoch=show)
    return run_id, result.status
