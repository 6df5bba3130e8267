"""Recording a run: the `Recorder` a run reports to, and decision-grid maps.

The batched engine (`gradscope.runner.batched`) reports every member's epochs to a `Recorder`
(the database's `EpochWriter` in a real run, a list in a test); for two-feature datasets it
also records the predicted probabilities on a fixed grid at a few epochs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import torch
from torch import Tensor

from gradscope.runner.datasets import Dataset
from gradscope.vocab.records import DecisionGrid, EpochRecord, LayerInfo

GRID_SIZE = 48


class Recorder(Protocol):
    def start(
        self, layers: list[LayerInfo], points: tuple[int, bytes] | None, device: str
    ) -> None: ...

    def epoch(self, record: EpochRecord) -> bool:
        """Store one epoch; return True to stop (cancellation was requested)."""
        ...

    # Optional: `warnings(rows)` stores live warnings (gradscope.analysis.spikes.Warning_
    # .to_json() dicts) as they are found; the engine calls it only where it exists.


class EpochBatch(Protocol):
    """Stores several group members' epochs at once (one database transaction for a group's
    epoch end, `gradscope.runner.execute.GroupEpochWriter`), instead of each member's
    `Recorder.epoch`."""

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
