"""The training loop: data, model, optimizer, epochs. Knows nothing of SQL or Streamlit.

`train()` calls a recorder once per epoch with everything measured; the recorder decides where
it goes (the database, a list in a test). One CPU-device sync per epoch, none per step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from db.records import DecisionGrid, EpochRecord, LayerInfo
from runner.config import RunConfig
from runner.data import Dataset, load_dataset
from runner.models import MLP, build_model
from runner.probes import EpochGradStats, FlatParameters, activation_stats

GRID_SIZE = 48
STOP_CHECK_SECONDS = 1.0


class Recorder(Protocol):
    def start(
        self, layers: list[LayerInfo], points: tuple[int, bytes] | None, device: str
    ) -> None: ...

    def epoch(self, record: EpochRecord) -> bool:
        """Store one epoch; return True to stop (cancellation was requested)."""
        ...


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


def grid_epochs(epochs: int) -> set[int]:
    """Epoch 1, about every tenth of the run (at least two epochs apart), and the last epoch.

    Each map is a forward pass over 48x48 points: in short runs, one every epoch costs ~10%."""
    every = max(2, round(epochs / 10))
    return {1, epochs} | set(range(every, epochs + 1, every))


def make_optimizer(cfg: RunConfig, params) -> torch.optim.Optimizer:  # noqa: ANN001
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.Adam(params, lr=cfg.lr)


class _Grid:
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


def _batches(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    return list(torch.randperm(n, generator=generator).split(batch_size))


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
    n_train = len(x_train)
    grid = _Grid(data, device) if data.n_features == 2 else None
    grid_at = grid_epochs(cfg.epochs)
    layers = model.layer_infos()
    kinds = [info.activation for info in layers]
    probe = EpochGradStats(flat.weight_sizes, 1, device)
    recorder.start(layers, test_points(data) if grid else None, str(device))

    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device)
    last: dict[str, float] = {}
    for epoch in range(1, cfg.epochs + 1):
        started = time.perf_counter()
        next_check = time.monotonic() + STOP_CHECK_SECONDS
        model.train()
        probe.begin(flat.weights)
        loss_sum.zero_()
        correct.zero_()
        for idx in _batches(n_train, cfg.batch_size, shuffle):
            xb, yb = x_train[idx], y_train[idx]
            flat.zero_grad()
            logits = model(xb)
            loss = loss_fn(logits, yb)
            (loss / len(idx)).backward()
            # Gradients are read here, after backward() and before step(): no hooks needed.
            probe.step(flat.weight_grads)
            optimizer.step()
            loss_sum.add_(loss.detach())
            correct.add_(((logits.detach() > 0) == (yb > 0.5)).sum())
            if time.monotonic() > next_check:
                next_check = time.monotonic() + STOP_CHECK_SECONDS
                reason = should_stop()
                if reason:
                    return TrainResult(reason, epoch - 1, last)

        record, metrics = _measure_epoch(
            epoch,
            model,
            flat,
            probe,
            kinds,
            x_test,
            y_test,
            loss_sum / n_train,
            correct / n_train,
            grid if epoch in grid_at else None,
        )
        metrics["seconds"] = time.perf_counter() - started
        cancelled = recorder.epoch(record)
        last = metrics
        if not (math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["test_loss"])):
            return TrainResult("diverged", epoch, last, f"loss became non-finite in epoch {epoch}")
        if cancelled:
            return TrainResult("cancelled", epoch, last)
        reason = should_stop()
        if reason:
            return TrainResult(reason, epoch, last)
    return TrainResult("completed", cfg.epochs, last)


@torch.inference_mode()
def _measure_epoch(
    epoch: int,
    model: MLP,
    flat: FlatParameters,
    probe: EpochGradStats,
    kinds: list[str],
    x_test: Tensor,
    y_test: Tensor,
    train_loss: Tensor,
    train_acc: Tensor,
    grid: _Grid | None,
) -> tuple[EpochRecord, dict[str, float]]:
    """The end-of-epoch pass over the test split and the one device-to-host copy."""
    model.eval()
    acts: list[Tensor] = []
    logits = model.forward_collect(x_test, acts)
    probs = torch.sigmoid(logits)
    test_loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y_test)
    test_acc = ((logits > 0) == (y_test > 0.5)).float().mean()
    grads = probe.finish(flat.weight_grads, flat.weights)
    health = activation_stats([a.unsqueeze(0) for a in acts], kinds)
    hist = grads.pop("grad_hist")[:, 0].to(torch.int32).cpu().numpy()
    per_layer = torch.stack([v[:, 0] for v in (*grads.values(), *health.values())], dim=1)
    epoch_values = torch.stack(
        [train_loss, train_acc.float(), test_loss, test_acc, probs.std(unbiased=False)]
    )
    # The one sync of the epoch.
    table = per_layer.cpu().tolist()
    train_l, train_a, test_l, test_a, pred_std = epoch_values.cpu().tolist()
    names = (*grads.keys(), *health.keys())
    stats: list[dict[str, float | bytes | None]] = []
    for layer, row in enumerate(table):
        values: dict[str, float | bytes | None] = dict(zip(names, row, strict=True))
        values["grad_hist"] = hist[layer].astype("<i4").tobytes()
        stats.append(values)
    metrics = {
        "train_loss": train_l,
        "train_acc": train_a,
        "test_loss": test_l,
        "test_acc": test_a,
        "pred_std": pred_std,
    }
    grid_record = grid.record(torch.sigmoid(model(grid.inputs))) if grid is not None else None
    return EpochRecord(epoch, metrics, stats, grid_record), metrics
