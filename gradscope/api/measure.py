"""One epoch of a watched model, measured on the run's measuring thread: the gradient statistics
(gradscope.runner.gradient_stats.EpochGradStats, reduced per device), activation health from the
probe batch, and
the epoch's one device-to-host copy per device, as the store's rows."""

from __future__ import annotations

import math

import torch

from gradscope.api.watch import EpochPart, Layer, prediction_spread, probe_statistics
from gradscope.runner.gradient_stats import EPOCH_VALUE_FIELDS, epoch_rows
from gradscope.vocab.fields import ACTIVATION_STAT_FIELDS as ACT_FIELDS
from gradscope.vocab.fields import GRAD_STAT_FIELDS as GRAD_FIELDS
from gradscope.vocab.fields import HIST_SLOTS, LAYER_STAT_FIELDS


@torch.no_grad()
def epoch_layer_stats(
    layers: list[Layer], part: EpochPart
) -> tuple[list[dict[str, float | bytes | None]], float | None]:
    """Per-layer rows (LAYER_STAT_FIELDS and grad_hist) and the probe's prediction spread."""
    n = len(layers)
    values: list[list[float | None]] = [[None] * len(LAYER_STAT_FIELDS) for _ in range(n)]
    hists = [[0] * HIST_SLOTS for _ in range(n)]
    has_hist = [False] * n
    # Every group is finished even if one fails: an unfinished one would keep its ring blocks
    # claimed and stop the training thread at its next step.
    finished: list[tuple[list[int], dict[str, torch.Tensor]]] = []
    failure: BaseException | None = None
    for indices, finish, weights in part.finishers:
        try:
            finished.append((indices, finish(weights)))  # waits for the epoch's block reductions
        except BaseException as exc:  # noqa: BLE001 - re-raised once all are released
            failure = failure or exc
    if failure is not None:
        raise failure
    for indices, stats in finished:
        hist = stats.pop("grad_hist")[:, 0].to(torch.int32).cpu().tolist()
        table = torch.stack([stats[k][:, 0] for k in GRAD_FIELDS], dim=1).cpu().tolist()
        for row, i in enumerate(indices):
            for col, key in enumerate(GRAD_FIELDS):
                values[i][LAYER_STAT_FIELDS.index(key)] = table[row][col]
            hists[i], has_hist[i] = hist[row], True
    for i, health in probe_statistics(layers, part.acts).items():
        numbers = torch.stack([health[k] for k in ACT_FIELDS]).cpu().tolist()
        for key, number in zip(ACT_FIELDS, numbers, strict=True):
            values[i][LAYER_STAT_FIELDS.index(key)] = number
    # The rows as the built-in loop writes them (the epoch values are the run's, set apart).
    rows, _ = epoch_rows(
        LAYER_STAT_FIELDS, values, hists, (math.nan,) * len(EPOCH_VALUE_FIELDS), 0.0
    )
    for row, measured in zip(rows, has_hist, strict=True):
        if not measured:
            row["grad_hist"] = None
    pred_std = None
    if part.output is not None and part.output.numel():
        pred_std = float(prediction_spread(part.output).cpu())
    return rows, pred_std
