"""Run queued or foreground runs end to end: train, record, give each its final status.

`execute_run` (one run) and `execute_group` (a claimed group of same-shape runs) side by side;
shared by `gradscope train` and the background worker, so both record runs identically. Both
train through the batched hand-written engine (`gradscope.runner.batched.train_group`): a solo run
is a
group of one, recorded by the same code as a group's members, so the two paths cannot drift.
The autograd loop in tests/reference_loop.py is the reference the tests compare that engine with.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from gradscope.db.epoch_writes import EpochWriter
from gradscope.db.queries import get_run
from gradscope.db.warnings import add_warnings
from gradscope.runner.batched import TrainResult, error_text, train_group
from gradscope.vocab.config import RunConfig, make_config
from gradscope.vocab.protocol import THREADS_ENV
from gradscope.vocab.records import EpochRecord, FinalMetrics, LayerInfo


class DbRecorder:
    """Sends each epoch to the database in one transaction; reports cancellation requests."""

    def __init__(
        self, store: EpochWriter, run_id: str, on_epoch: Callable[[EpochRecord], None] | None = None
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

    def warnings(self, rows: list[dict[str, Any]]) -> None:
        """Store live warnings (gradscope.analysis.spikes) as the engine finds them."""
        add_warnings(self.store.engine, self.run_id, rows)


class _Discard:
    """A recorder that keeps nothing (for `warm_up`)."""

    def start(self, layers: list[LayerInfo], points: tuple[int, bytes] | None, device: str) -> None:
        pass

    def epoch(self, record: EpochRecord) -> bool:
        return False


def warm_up() -> None:
    """Train a tiny run in memory: torch's first calls of each kernel (bmm, the fused Adam,
    the statistics) set things up once per process; an idle worker pays that before a claim."""
    _one_thread()
    tiny = {"samples": 64, "depth": 2, "width": 4, "epochs": 1, "device": "cpu"}
    for optimizer in ("adam", "sgd"):
        train_group([make_config({**tiny, "optimizer": optimizer})], [_Discard()])


def _one_thread() -> None:
    # Tiny MLPs: one thread is as fast as two, and far faster when the other core is busy.
    torch.set_num_threads(int(os.environ.get(THREADS_ENV, "1")))


def execute_run(
    store: EpochWriter,
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
    _one_thread()
    try:
        # A group of one: the same step and recording as a batched member. A recorder that
        # fails ends the run `failed` inside train_group, as an exception here would.
        [result] = train_group([cfg], [DbRecorder(store, run_id, on_epoch)], should_stop)
    except KeyboardInterrupt:
        store.finish_run(run_id, "interrupted", error="interrupted (Ctrl-C)")
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a run is recorded, not raised
        result = TrainResult("failed", -1, {}, error_text(exc))
    final = FinalMetrics.from_metrics(result.final)
    if not store.finish_run(run_id, result.status, final=final, error=result.error):
        stored = get_run(store.engine, run_id)
        return TrainResult(stored.status, stored.epochs_done, result.final, stored.error)
    return result


# -- groups ----------------------------------------------------------------------------------


class CancelRequests:
    """The group's cancel requests, read for all members at once and reused for a moment: a
    mid-epoch check asks every member, and that should be one query, not one per member."""

    def __init__(self, store: EpochWriter, run_ids: Sequence[str], max_age_s: float = 0.5) -> None:
        self.store = store
        self.run_ids = list(run_ids)
        self.max_age_s = max_age_s
        self._read_at = -math.inf
        self._requested: set[str] = set()

    def __contains__(self, run_id: object) -> bool:
        if time.monotonic() - self._read_at > self.max_age_s:
            self._requested = self.store.cancel_requests(self.run_ids)
            self._read_at = time.monotonic()
        return run_id in self._requested


class GroupMemberRecorder(DbRecorder):
    """A member's DbRecorder that also reports its cancellation mid-epoch (a read only: the
    worker's own heartbeat thread keeps every claimed member's heartbeat fresh)."""

    def __init__(self, store: EpochWriter, run_id: str, requests: CancelRequests) -> None:
        super().__init__(store, run_id)
        self.requests = requests

    def poll(self) -> bool:
        return self.run_id in self.requests


class GroupEpochWriter:
    """Stores a group's members' epochs in ONE transaction per group epoch
    (`EpochWriter.record_epochs`), with each run's own heartbeat, cancel flag and worker guard;
    one transaction per member was about a fifth of a 16-member group's time."""

    def __init__(self, store: EpochWriter, run_ids: Sequence[str]) -> None:
        self.store = store
        self.run_ids = list(run_ids)

    def epochs(
        self, members: Sequence[int], records: Sequence[EpochRecord]
    ) -> list[bool | Exception]:
        items = [(self.run_ids[k], r) for k, r in zip(members, records, strict=True)]
        return list(self.store.record_epochs(items))


def execute_group(
    store: EpochWriter,
    run_ids: Sequence[str],
    cfgs: Sequence[RunConfig],
    should_stop: Callable[[], str | None] = lambda: None,
) -> list[TrainResult]:
    """Train a claimed group (every member already `running`) as one batched model and give
    each member its own final status, as `execute_run` does for a solo run.

    Each member is finished as soon as it ends (others may still be training). An exception
    outside one member's recording ends every member not yet finished `failed` with its text.
    """
    if len(run_ids) != len(cfgs):
        raise ValueError("execute_group needs one config per run id")
    _one_thread()
    results: list[TrainResult | None] = [None] * len(run_ids)

    def finish(k: int, result: TrainResult) -> None:
        results[k] = result
        store.finish_run(
            run_ids[k],
            result.status,
            final=FinalMetrics.from_metrics(result.final),
            error=result.error,
        )

    requests = CancelRequests(store, run_ids)
    recorders = [GroupMemberRecorder(store, run_id, requests) for run_id in run_ids]
    try:
        train_group(
            cfgs,
            recorders,
            should_stop,
            on_done=finish,
            epoch_batch=GroupEpochWriter(store, run_ids),
        )
    except Exception as exc:  # noqa: BLE001 - any failure of a run is recorded, not raised
        detail = error_text(exc)
        for k, result in enumerate(results):
            if result is None:
                finish(k, TrainResult("failed", -1, {}, detail))
    return [r for r in results if r is not None]
