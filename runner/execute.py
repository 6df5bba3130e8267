"""Run one queued or foreground run end to end: train it, record it, give it a final status.

Shared by `gradscope train` and the background worker, so both record runs identically.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Callable

import torch

from db.queries import get_run
from db.store import RunStore
from runner.train import TrainResult, train
from vocab.config import RunConfig
from vocab.records import EpochRecord, FinalMetrics, LayerInfo


class DbRecorder:
    """Sends each epoch to the database in one transaction; reports cancellation requests."""

    def __init__(
        self, store: RunStore, run_id: str, on_epoch: Callable[[EpochRecord], None] | None = None
    ) -> None:
        self.store = store
        self.run_id = run_id
        self.on_epoch = on_epoch

    def start(self, layers: list[LayerInfo], points: tuple[int, bytes] | None, device: str) -> None:
        self.store.record_layers(self.run_id, layers, points)
        self.store.set_runtime(self.run_id, device=device, torch_version=torch.__version__)

    def epoch(self, record: EpochRecord) -> bool:
        cancelled = self.store.record_epoch(self.run_id, record)
        if self.on_epoch is not None:
            self.on_epoch(record)
        return cancelled


def execute_run(
    store: RunStore,
    run_id: str,
    cfg: RunConfig,
    should_stop: Callable[[], str | None] = lambda: None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> TrainResult:
    """Train a run that is already `running`, then set its final status.

    Any exception ends the run `failed` with the error text; epochs recorded before stay. A
    KeyboardInterrupt ends it `interrupted` and goes on up. If the run stopped being ours
    meanwhile (another worker marked it lost), its stored status is returned, not overwritten.
    """
    # Tiny MLPs: one thread is as fast as two, and far faster when the other core is busy.
    torch.set_num_threads(int(os.environ.get("GRADSCOPE_THREADS", "1")))
    try:
        result = train(cfg, DbRecorder(store, run_id, on_epoch), should_stop)
    except KeyboardInterrupt:
        store.finish_run(run_id, "interrupted", error="interrupted (Ctrl-C)")
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a run is recorded, not raised
        detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        result = TrainResult("failed", -1, {}, detail)
    final = FinalMetrics.from_metrics(result.final)
    if not store.finish_run(run_id, result.status, final=final, error=result.error):
        stored = get_run(store.engine, run_id)
        return TrainResult(stored.status, stored.epochs_done, result.final, stored.error)
    return result
