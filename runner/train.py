"""The autograd training loop: data, model, torch.optim, epochs. Knows nothing of SQL or Streamlit.

Runs of the built-in architectures train on the hand-written engine (`runner.ensemble`, a solo
run being a group of one); this loop is the reference the tests compare that engine with.

`train()` calls a recorder once per epoch with everything measured; the recorder decides where
it goes (the database, a list in a test). One CPU-device sync per epoch, none per step.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from runner.datasets import load_dataset
from runner.networks import MLP, build_model
from runner.probes import EpochGradStats, FlatParameters
from runner.recording import (
    DecisionGridMaker,
    EpochMeasurer,
    Measured,
    Recorder,
    grid_epochs,
    test_points,
)
from vocab.config import RunConfig

STOP_CHECK_SECONDS = 1.0


@dataclass
class TrainResult:
    status: str  # completed | diverged | cancelled | interrupted
    epochs_done: int
    final: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda was asked for but CUDA is not available here")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


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
