"""Recording a run: the `Recorder` a run reports to, decision-grid maps, and the end-of-epoch
measurement, overlapped with the next epoch's training.

After each epoch a run is measured on the test split (loss, accuracy, activation health per
layer), optionally on the decision grid, and stored. On a small model that work costs as much as
a third of an epoch's steps, so it runs on a background thread against a snapshot of the
weights while the training thread goes on; with one torch thread per op, the two use both cores.
The numbers are the same as measuring in line: the snapshot is taken at the epoch's end.
Epochs are measured and stored in order, one at a time. The same thread reduces the blocks of
per-step gradients (runner.probes.EpochGradStats), in order with the measurements.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import torch
from torch import Tensor

from runner.datasets import Dataset
from runner.networks import MLP
from runner.probes import (
    FlatParameters,
    GradStatsFn,
    activation_stats,
    divergence,
    epoch_rows,
)
from vocab.records import DecisionGrid, EpochRecord, LayerInfo

GRID_SIZE = 48


class Recorder(Protocol):
    def start(
        self, layers: list[LayerInfo], points: tuple[int, bytes] | None, device: str
    ) -> None: ...

    def epoch(self, record: EpochRecord) -> bool:
        """Store one epoch; return True to stop (cancellation was requested)."""
        ...


class EpochBatch(Protocol):
    """Stores several group members' epochs at once (one database transaction for a group's
    epoch end, `runner.execute.GroupEpochWriter`), instead of each member's `Recorder.epoch`."""

    def epochs(
        self, members: Sequence[int], records: Sequence[EpochRecord]
    ) -> list[bool | Exception]:
        """Per member (its index in the group), in order: True to stop it (cancellation was
        requested), False to go on, or the exception that storing its epoch raised."""
        ...


def grid_epochs(epochs: int) -> set[int]:
    """Epoch 1, about every tenth of the run (at least two epochs apart), and the last epoch.

    Each map is a forward pass over 48x48 points: in short runs, one every epoch costs ~10%."""
    every = max(2, round(epochs / 10))
    return {1, epochs} | set(range(every, epochs + 1, every))


class DecisionGridMaker:
    """A fixed grid over the data's range (standardized space) for decision-boundary maps."""

    def __init__(self, data: Dataset, device: torch.device) -> None:
        both = np.concatenate([data.x_train, data.x_test])
        lo, hi = both.min(axis=0), both.max(axis=0)
        pad = (hi - lo) * 0.1
        self.lo, self.hi = lo - pad, hi + pad
        xs = np.linspace(self.lo[0], self.hi[0], GRID_SIZE, dtype=np.float32)
        ys = np.linspace(self.lo[1], self.hi[1], GRID_SIZE, dtype=np.float32)
        gx, gy = np.meshgrid(xs, ys)  # row-major [y, x]
        self.inputs = torch.from_numpy(np.stack([gx.ravel(), gy.ravel()], axis=1)).to(device)

    def record(self, probs: Tensor) -> DecisionGrid:
        data = probs.detach().float().cpu().numpy().astype("<f2").tobytes()
        return DecisionGrid(
            GRID_SIZE,
            float(self.lo[0]),
            float(self.hi[0]),
            float(self.lo[1]),
            float(self.hi[1]),
            data,
        )


def test_points(data: Dataset) -> tuple[int, bytes]:
    pts = np.concatenate([data.x_test, data.y_test[:, None]], axis=1).astype("<f4")
    return len(pts), pts.tobytes()


@dataclass(frozen=True)
class Measured:
    """What storing one epoch told the training loop."""

    epoch: int
    metrics: dict[str, float]
    cancelled: bool
    diverged: str | None  # why the epoch counts as diverged (runner.probes.divergence)


T = TypeVar("T")


def _settle(future: Future[T], compute: Callable[[], T]) -> None:
    """Compute a value the measuring thread waits for; an error goes to it as well."""
    try:
        future.set_result(compute())
    except BaseException as exc:
        future.set_exception(exc)  # the measurement waiting for it re-raises it
        if not isinstance(exc, Exception):
            raise


class EpochMeasurer:
    """Measures and records epochs on one background thread, in order."""

    def __init__(
        self,
        model: MLP,
        kinds: list[str],
        x_test: Tensor,
        y_test: Tensor,
        grid: DecisionGridMaker | None,
        recorder: Recorder,
        threaded: bool = True,
    ) -> None:
        # A copy of the model whose weights are overwritten with each epoch's snapshot.
        self._live = model  # the trained model, for the last epoch's grid (see submit)
        self._model = copy.deepcopy(model).eval()
        self._flat = FlatParameters(list(self._model.linears))
        self._kinds = kinds
        self._x_test, self._y_test = x_test, y_test
        self._grid = grid
        self._recorder = recorder
        self._pool = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="gradscope-measure")
            if threaded
            else None
        )
        self._pending: list[Future[Measured]] = []
        self._handoffs: list[Future] = []  # values this thread owes the measuring thread

    @property
    def executor(self) -> ThreadPoolExecutor | None:
        """The measuring thread (None when measuring in line), for work that must run in
        order with the measurements: the gradient reductions of runner.probes."""
        return self._pool

    def submit(
        self,
        epoch: int,
        weights: Tensor,
        grad_stats: GradStatsFn,
        train_loss: Tensor,
        train_acc: Tensor,
        seconds: float,
        *,
        with_grid: bool,
        last: bool = False,
    ) -> None:
        """Queue the measurement of an epoch that just ended. Copies what the next epoch will
        change (the weights), so the caller may train on at once. After the `last` epoch
        nothing trains, so the caller's thread takes that epoch's gradient statistics and grid
        while the measuring thread makes the test pass: both cores work on the run's tail."""
        snapshot = weights.detach().clone()
        here = last and self._pool is not None
        grads: GradStatsFn | Future[dict[str, Tensor]] = Future() if here else grad_stats
        grid: Future[Tensor] | None = (
            Future() if here and with_grid and self._grid is not None else None
        )
        args = (
            epoch,
            snapshot,
            grads,
            train_loss.clone(),
            train_acc.clone(),
            seconds,
            with_grid,
            grid,
        )
        if self._pool is not None:
            self._handoffs = [f for f in (grads, grid) if isinstance(f, Future)]
            self._pending.append(self._pool.submit(self._measure, *args))
            if isinstance(grads, Future):
                _settle(grads, lambda: grad_stats(snapshot[: self._flat.n_weights]))
            if grid is not None:
                _settle(grid, lambda: self._grid_probs(self._live))
            return
        done: Future[Measured] = Future()  # in line: the same path, already finished
        try:
            done.set_result(self._measure(*args))
        except Exception as exc:  # noqa: BLE001 - re-raised by wait(), as when threaded
            done.set_exception(exc)
        self._pending.append(done)

    def wait(self) -> list[Measured]:
        """Wait for every queued epoch to be stored; re-raises the first error."""
        done = []
        while self._pending:
            done.append(self._pending.pop(0).result())
        return done

    def close(self) -> None:
        if self._pool is not None:
            # Interrupted between queueing the last epoch and handing it its values: release
            # the measurement waiting for them, or shutting down would wait forever.
            for owed in self._handoffs:
                if not owed.done():
                    owed.set_exception(RuntimeError("training stopped before the last epoch"))
            self._pool.shutdown(wait=True, cancel_futures=True)

    @torch.inference_mode()
    def _measure(
        self,
        epoch: int,
        weights: Tensor,
        grad_stats: GradStatsFn | Future[dict[str, Tensor]],
        train_loss: Tensor,
        train_acc: Tensor,
        seconds: float,
        with_grid: bool,
        grid: Future[Tensor] | None,
    ) -> Measured:
        self._flat.data.copy_(weights)
        try:
            acts: list[Tensor] = []
            logits = self._model.forward_collect(self._x_test, acts)
            probs = torch.sigmoid(logits)
            test_loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, self._y_test)
            test_acc = ((logits > 0) == (self._y_test > 0.5)).float().mean()
            health = activation_stats([a.unsqueeze(0) for a in acts], self._kinds)
        finally:
            # Taken even when the test pass failed: the training thread reuses the gradient
            # ring only once these statistics are taken, and must not wait forever.
            if isinstance(grad_stats, Future):
                grads = dict(grad_stats.result())
            else:
                grads = grad_stats(self._flat.weights)
        hist = grads.pop("grad_hist")[:, 0].to(torch.int32).cpu().numpy()
        per_layer = torch.stack([v[:, 0] for v in (*grads.values(), *health.values())], dim=1)
        epoch_values = torch.stack(
            [train_loss, train_acc.float(), test_loss, test_acc, probs.std(unbiased=False)]
        )
        # The one device-to-host copy of the epoch.
        stats, metrics = epoch_rows(
            (*grads.keys(), *health.keys()),
            per_layer.cpu().tolist(),
            hist,
            epoch_values.cpu().tolist(),
            seconds,
        )
        grid_record = None
        if with_grid and self._grid is not None:
            grid_probs = grid.result() if grid is not None else self._grid_probs(self._model)
            grid_record = self._grid.record(grid_probs)
        cancelled = self._recorder.epoch(EpochRecord(epoch, metrics, stats, grid_record))
        return Measured(epoch, metrics, bool(cancelled), divergence(epoch, metrics, stats))

    @torch.inference_mode()
    def _grid_probs(self, model: MLP) -> Tensor:
        return torch.sigmoid(model(self._grid.inputs))
