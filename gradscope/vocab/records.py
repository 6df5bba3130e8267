"""Plain records the runner hands to the store: what one epoch of one run produced."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gradscope.vocab.fields import FINAL_FIELDS, PEAK_GRAD_FIELDS


@dataclass(frozen=True)
class LayerInfo:
    """One layer of a model, index 0 nearest the input: an nn.Linear of a built-in run, or
    any weight of a user's model (gradscope.api.watch), with its shape as JSON."""

    layer: int
    name: str
    kind: str
    activation: str
    fan_in: int
    fan_out: int
    n_params: int
    shape: str | None = None


@dataclass(frozen=True)
class DecisionGrid:
    """Predicted probabilities on a size x size grid (float16 bytes, row-major [y, x])."""

    size: int
    x_min: float
    x_max: float
    y_min: float
    y_max: float
    probs: bytes


@dataclass(frozen=True)
class EpochRecord:
    """Everything recorded at the end of one epoch."""

    epoch: int
    metrics: dict[str, float]
    # One dict per layer: LAYER_STAT_FIELDS values plus "grad_hist" (bytes).
    layer_stats: list[dict[str, float | bytes | None]]
    grid: DecisionGrid | None = None

    @property
    def peak_grad(self) -> float | None:
        """The largest |value| of PEAK_GRAD_FIELDS over this epoch's layers (inf counts, NaN
        and missing values do not); None when there is none."""
        values = [
            abs(float(v))  # type: ignore[arg-type]
            for stats in self.layer_stats
            for k in PEAK_GRAD_FIELDS
            if (v := stats.get(k)) is not None and not math.isnan(float(v))  # type: ignore[arg-type]
        ]
        return max(values) if values else None


@dataclass(frozen=True)
class FinalMetrics:
    train_loss: float | None = None
    train_acc: float | None = None
    test_loss: float | None = None
    test_acc: float | None = None
    pred_std: float | None = None

    @classmethod
    def from_metrics(cls, metrics: dict[str, float] | None) -> FinalMetrics:
        if not metrics:
            return cls()
        return cls(**{k: metrics.get(k) for k in FINAL_FIELDS})


@dataclass
class RunSpec:
    """A run to create: its validated config (as JSON-able dict) and where it belongs."""

    config: dict
    name: str | None = None
    sweep_id: str | None = None
    sweep_name: str | None = None
    group_id: str | None = None
    group_index: int | None = None
    extra: dict = field(default_factory=dict)
