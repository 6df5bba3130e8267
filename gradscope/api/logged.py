"""Free metrics (`run.log`): checked on the training thread, read and written off it.

`MetricLog.add` checks names, values, the step and the run's limits at once (a bad metric is the
caller's error, raised at the call), and keeps tensors as they are, detached: reading a CUDA
scalar syncs, so it is read on the run's measuring thread (`resolve`: one stacked device-to-host
copy per device for a whole batch of rows), never on the training thread. Rows wait in memory
until the epoch closes or FLUSH_ROWS have gathered. Torch-free until a tensor is handed in.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

from gradscope.vocab.metrics import (
    MAX_METRIC_NAMES,
    MAX_METRIC_ROWS,
    MAX_METRICS_PER_CALL,
    MetricError,
    metric_name_problem,
)

FLUSH_ROWS = 4096  # rows gathered before they are written without waiting for the epoch's end

Row = tuple[str, int, int, Any]  # name, step, epoch, value (a number or a detached 0-d tensor)


def scalar(name: str, value: Any) -> Any:
    """A value as kept until it is written: a Python float, or a detached one-element tensor
    (read later, off the training thread). Raises MetricError/TypeError for anything else."""
    if isinstance(value, numbers.Real):  # int, float, bool, numpy scalars
        return float(value)
    if hasattr(value, "detach") and hasattr(value, "numel"):  # a torch tensor
        if value.numel() != 1:
            raise MetricError(
                f"metric {name!r} must be a number or a one-element tensor, got a "
                f"tensor of shape {tuple(value.shape)}"
            )
        if value.is_complex():
            raise MetricError(f"metric {name!r} is complex; log its real part or its abs()")
        return value.detach()
    if hasattr(value, "item") and getattr(value, "size", None) == 1:  # a 0-d numpy array
        item = value.item()
        if isinstance(item, numbers.Real):
            return float(item)
    raise TypeError(
        f"metric {name!r} must be a number or a one-element tensor, got {type(value).__name__}"
    )


class MetricLog:
    """One run's free metrics on the training thread: the checks, the limits, the rows to write."""

    def __init__(self) -> None:
        self.names: set[str] = set()
        self.rows = 0  # rows accepted so far (written or waiting)
        self.pending: list[Row] = []

    def add(self, metrics: Mapping[str, Any], step: int, epoch: int) -> None:
        """Check every metric first, then keep them all (a bad one keeps none of the call)."""
        if not isinstance(metrics, Mapping):
            raise TypeError(f"run.log takes a dict of name -> value, got {type(metrics).__name__}")
        if len(metrics) > MAX_METRICS_PER_CALL:
            raise MetricError(
                f"{len(metrics)} metrics in one call; at most {MAX_METRICS_PER_CALL} per step"
            )
        rows: list[Row] = []
        for name, value in metrics.items():
            problem = metric_name_problem(name)
            if problem:
                raise MetricError(problem)
            rows.append((name, step, epoch, scalar(name, value)))
        new = {r[0] for r in rows} - self.names
        if len(self.names) + len(new) > MAX_METRIC_NAMES:
            raise MetricError(
                f"a run may log at most {MAX_METRIC_NAMES} distinct metric names; "
                f"{sorted(new)[:3]} would make {len(self.names) + len(new)}"
            )
        if self.rows + len(rows) > MAX_METRIC_ROWS:
            raise MetricError(
                f"a run may log at most {MAX_METRIC_ROWS:,} values; log less often "
                "(e.g. every 10th step) or start a new run"
            )
        self.names |= new
        self.rows += len(rows)
        self.pending += rows

    def take(self) -> list[Row]:
        rows, self.pending = self.pending, []
        return rows


def resolve(rows: list[Row]) -> list[tuple[str, int, int, float]]:
    """The rows with every value a Python float: tensors read with one stacked copy per device
    and dtype-independent float64 (float32 where the device has no float64). Called on the
    measuring thread: this is where a CUDA value's sync happens."""
    tensors = [i for i, r in enumerate(rows) if not isinstance(r[3], float)]
    values: list[Any] = [r[3] for r in rows]
    if tensors:
        import torch

        by_device: dict[Any, list[int]] = {}
        for i in tensors:
            by_device.setdefault(rows[i][3].device, []).append(i)
        for device, indices in by_device.items():
            wide = torch.float32 if device.type == "mps" else torch.float64
            stacked = torch.stack([rows[i][3].reshape(()).to(wide) for i in indices])
            for i, number in zip(indices, stacked.cpu().tolist(), strict=True):
                values[i] = float(number)
    return [(r[0], r[1], r[2], v) for r, v in zip(rows, values, strict=True)]
