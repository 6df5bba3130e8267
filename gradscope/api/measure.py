"""One epoch of a watched model, measured on the run's measuring thread: the gradient statistics
(gradscope.runner.gradient_stats.EpochGradStats, reduced per device), activation health from the
probe batch, and
the epoch's one device-to-host copy per device, as the store's rows."""

from __future__ import annotations

import math

import torch

from gradscope.api.insight import probe_outcome
from gradscope.api.watch import EpochPart, Layer, prediction_spread, probe_statistics
from gradscope.runner.gradient_stats import EPOCH_VALUE_FIELDS, epoch_rows
from gradscope.vocab.fields import ACTIVATION_STAT_FIELDS as ACT_FIELDS
from gradscope.vocab.fields import DIVERGENCE_LAYER_FIELDS, HIST_SLOTS, LAYER_STAT_FIELDS
from gradscope.vocab.fields import GRAD_STAT_FIELDS as GRAD_FIELDS

# The moment of divergence, kept per layer as built-in runs keep it (epoch_rows moves the step
# to the epoch and drops the finite_* values of an epoch without one).
_MOMENT = (*DIVERGENCE_LAYER_FIELDS, "first_nonfinite_step")
_NAMES = (*LAYER_STAT_FIELDS, *_MOMENT)


@torch.no_grad()
def epoch_layer_stats(
    layers: list[Layer], part: EpochPart
) -> tuple[list[dict[str, float | bytes | None]], float | None, dict[str, float]]:
    """Per-layer rows (LAYER_STAT_FIELDS, the moment of divergence's finite_* values, and
    grad_hist), the probe's prediction spread, and extras: the epoch's first_nonfinite_step
    (when a step's gradient became non-finite) and the probe's outcome (probe_top_class_frac,
    probe_accuracy, probe_chance, probe_r2, as measured)."""
    n = len(layers)
    values: list[list[float | None]] = [[None] * len(_NAMES) for _ in range(n)]
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
        keys = (*GRAD_FIELDS, *_MOMENT)
        table = torch.stack([stats[k][:, 0] for k in keys], dim=1).cpu().tolist()
        for row, i in enumerate(indices):
            for col, key in enumerate(keys):
                values[i][_NAMES.index(key)] = table[row][col]
            hists[i], has_hist[i] = hist[row], True
    for i, health in probe_statistics(layers, part.acts, part.kinds).items():
        numbers = torch.stack([health[k] for k in ACT_FIELDS]).cpu().tolist()
        for key, number in zip(ACT_FIELDS, numbers, strict=True):
            values[i][LAYER_STAT_FIELDS.index(key)] = number
    # The rows as the built-in loop writes them (the epoch values are the run's, set apart).
    # Several device groups: the epoch's moment is the earliest of theirs (0: none).
    bad = [v[_NAMES.index("first_nonfinite_step")] for v in values]
    earliest = min((b for b in bad if b), default=0.0)
    for row_values in values:
        row_values[_NAMES.index("first_nonfinite_step")] = earliest
    rows, moment = epoch_rows(_NAMES, values, hists, (math.nan,) * len(EPOCH_VALUE_FIELDS), 0.0)
    for row, measured in zip(rows, has_hist, strict=True):
        if not measured:
            row["grad_hist"] = None
    pred_std = None
    extra: dict[str, float] = {}
    if "first_nonfinite_step" in moment:
        extra["first_nonfinite_step"] = moment["first_nonfinite_step"]
    if part.output is not None and part.output.numel():
        pred_std = float(prediction_spread(part.output).cpu())
        # Predicted classes, and with labels accuracy against chance (or R^2).
        extra.update({f"probe_{k}": v for k, v in probe_outcome(part.output, part.labels).items()})
    return rows, pred_std, extra
