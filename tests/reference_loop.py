"""The reference autograd training loop (tests only): data, model, torch.optim, epochs.

Runs of the built-in architectures train on the hand-written batched engine
(`gradscope.runner.batched`, a solo run being a group of one); this plain loop is what the tests
compare that engine with, so it lives beside them, not in the product.

`train()` calls a recorder once per epoch with everything measured; the recorder decides where
it goes (the database, a list in a test). One CPU-device sync per epoch, none per step.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from gradscope.runner.batched import STOP_CHECK_SECONDS, TrainResult, resolve_device
from gradscope.runner.datasets import load_dataset
from gradscope.runner.gradient_stats import (
    EpochGradStats,
    FlatParameters,
    GradStatsFn,
    activation_stats,
    divergence,
    epoch_rows,
)
from gradscope.runner.networks import MLP, build_model
from gradscope.runner.recording import DecisionGridMaker, Recorder, grid_epochs, test_points
from gradscope.vocab.config import RunConfig
from gradscope.vocab.records import EpochRecord


def make_optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:  # noqa: ANN001
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.Adam(params, lr=cfg.lr)


def _shuffled(n: int, batch_size: int, generator: torch.Generator) -> tuple[Tensor, list[Tensor]]:
    """An epoch's order of the training rows, and that order cut into batches."""
    order = torch.randperm(n, generator=generator)
    return order, list(order.split(batch_size))


def train(
    cfg: RunConfig, recorder: Recorder, should_stop: Callable[[], str | None] = lambda: None
) -> TrainResult:
    """Train one run, recording every epoch. `should_stop` returns a status ("cancelled",
    "interrupted") to stop at the next check (every epoch end, and about once a second)."""
    device = resolve_device(cfg.device)
    data = load_dataset(cfg)
    torch.manual_seed(cfg.seed)
    model: MLP = build_model(cfg, data.n_features).to(device)
    flat = FlatParameters(list(model.linears))
    optimizer = make_optimizer(cfg, model.parameters())
    loss_fn = torch.nn.BCEWithLogitsLoss(reduction="sum")
    shuffle = torch.Generator().manual_seed(cfg.seed)

    x_train = torch.from_numpy(data.x_train).to(device)
    y_train = torch.from_numpy(data.y_train).to(device)
    x_test = torch.from_numpy(data.x_test).to(device)
    y_test = torch.from_numpy(data.y_test).to(device)
    grid = DecisionGridMaker(data, device) if data.n_features == 2 else None
    grid_at = grid_epochs(cfg.epochs)
    layers = model.layer_infos()
    kinds = [info.activation for info in layers]
    recorder.start(layers, test_points(data) if grid else None, str(device))

    threaded = os.environ.get("GRADSCOPE_MEASURE_THREAD", "1") != "0"
    measurer = EpochMeasurer(model, kinds, x_test, y_test, grid, recorder, threaded)
    probe = EpochGradStats(flat.weight_sizes, 1, device, measurer.executor)
    run = _Training(
        cfg, model, flat, optimizer, loss_fn, shuffle, x_train, y_train, probe, measurer, grid_at
    )
    try:
        return _epochs(run, should_stop)
    finally:
        measurer.close()


@dataclass
class _Training:
    """What the epoch loop works with, built by `train()`."""

    cfg: RunConfig
    model: MLP
    flat: FlatParameters
    optimizer: torch.optim.Optimizer
    loss_fn: torch.nn.Module
    shuffle: torch.Generator
    x_train: Tensor
    y_train: Tensor
    probe: EpochGradStats
    measurer: EpochMeasurer
    grid_at: set[int]


def _epochs(run: _Training, should_stop: Callable[[], str | None]) -> TrainResult:
    """The epoch loop. Epoch e is measured and stored while epoch e+1 trains; its outcome
    (non-finite test loss, cancellation) is acted on at the end of epoch e+1, before that epoch
    is recorded, so a run stops with exactly the epochs it stored."""
    cfg, flat, probe, measurer, x_train, y_train = (
        run.cfg,
        run.flat,
        run.probe,
        run.measurer,
        run.x_train,
        run.y_train,
    )
    n_train = len(x_train)
    loss_sum = torch.zeros((), device=x_train.device)
    last: dict[str, float] = {}
    last_epoch = 0  # the newest epoch stored

    def settle(done: list[Measured]) -> TrainResult | None:
        nonlocal last, last_epoch
        for outcome in done:
            last, last_epoch = outcome.metrics, outcome.epoch
            if outcome.diverged:
                return TrainResult("diverged", outcome.epoch, last, outcome.diverged)
            # A run that stored all its epochs has completed, whatever was asked meanwhile.
            if outcome.cancelled and outcome.epoch < cfg.epochs:
                return TrainResult("cancelled", outcome.epoch, last)
        return None

    def stop(reason: str) -> TrainResult:
        return settle(measurer.wait()) or TrainResult(reason, last_epoch, last)

    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        next_check = time.monotonic() + STOP_CHECK_SECONDS
        probe.begin(flat.weights)
        loss_sum.zero_()
        order, batches = _shuffled(n_train, cfg.batch_size, run.shuffle)
        epoch_logits: list[Tensor] = []  # for the accuracy, counted once at the epoch's end
        for idx in batches:
            xb, yb = x_train[idx], y_train[idx]
            flat.zero_grad()
            logits = run.model(xb)
            loss = run.loss_fn(logits, yb)
            (loss / len(idx)).backward()
            # Gradients are read here, after backward() and before step(): no hooks needed.
            probe.step(flat.weight_grads)
            run.optimizer.step()
            loss_sum.add_(loss.detach())
            epoch_logits.append(logits.detach())
            if time.monotonic() > next_check:
                next_check = time.monotonic() + STOP_CHECK_SECONDS
                reason = should_stop()
                if reason:
                    return stop(reason)
        seconds = time.perf_counter() - started
        # The previous epoch was measured while this one trained: act on its outcome before
        # recording this one.
        outcome = settle(measurer.wait())
        if outcome:
            return outcome
        correct = ((torch.cat(epoch_logits) > 0) == (y_train[order] > 0.5)).sum()
        train_loss = loss_sum / n_train
        measurer.submit(
            epoch,
            flat.data,
            probe.finish_later(),
            train_loss,
            correct / n_train,
            seconds,
            with_grid=epoch in run.grid_at,
            last=epoch == cfg.epochs,
        )
        if not math.isfinite(float(train_loss)):  # one sync per epoch; the rest is deferred
            return settle(measurer.wait()) or TrainResult("diverged", epoch, last)
        reason = should_stop() if epoch < cfg.epochs else None
        if reason:
            return stop(reason)
    return settle(measurer.wait()) or TrainResult("completed", cfg.epochs, last)


# -- the end-of-epoch measurement, overlapped with the next epoch's training -----------------


@dataclass(frozen=True)
class Measured:
    """What storing one epoch told the training loop."""

    epoch: int
    metrics: dict[str, float]
    cancelled: bool
    diverged: (
        str | None
    )  # why the epoch counts as diverged (gradscope.runner.gradient_stats.divergence)


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
        order with the measurements: the gradient reductions of gradscope.runner.gradient_stats."""
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
