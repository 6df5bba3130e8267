"""The gradient reaching each time step of a sequence: what weight gradients cannot show.

A recurrent weight is shared by every time step, so its gradient is a sum over the steps: the
terms from early steps may vanish (a tanh RNN over 80 steps: the loss's gradient reaching the
first input is 1e-18 of the one reaching the last) while the weight's gradient, dominated by
the late steps, looks normal (its first-over-last layer ratio was 10^-0.35 in the same run).
Only a gradient with respect to the sequence itself sees it: here, one forward and one
backward pass of a probe batch, with `torch.autograd.grad` taken with respect to the input (or,
for token ids, the first embedding's output), never touching the parameters' `.grad`.

`time_gradients(model, x, y, loss_fn, time_dim=1)` is the measurement anywhere;
`run.watch(..., probe=(x, y), time_dim=1, loss_fn=...)` takes it at every `log_epoch` and keeps
it with the run, where the diagnosis reads it. Cost: one forward and backward pass of the
probe batch per call (per epoch when watched), on the training thread.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

# The free metric kept per epoch by a watched run (run.log's table), and the facts key the
# diagnosis reads (config.model.facts): see gradscope.analysis.diagnosis.time_vanishing.
TIME_METRIC = "time_grad/log10_first_over_last"
TIME_FACTS = "time_gradients"
PROFILE_POINTS = 12  # time steps kept in the facts' profile, evenly spaced from first to last


def _first_tensor(output: object) -> Tensor | None:
    from gradscope.api.insight import _first_tensor as first

    return first(output)


@contextlib.contextmanager
def _no_cudnn(device: torch.device) -> Iterator[None]:
    """cuDNN's RNN refuses a backward pass in eval mode; its slower kernels do not."""
    if device.type == "cuda":
        with torch.backends.cudnn.flags(enabled=False):
            yield
    else:
        yield


def time_gradients(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    *,
    time_dim: int = 1,
) -> Tensor:
    """The norm of d(loss)/d(input at time t) for every time step t of `inputs` (a 1-D float32
    tensor of length inputs.shape[time_dim], on the input's device), over the whole batch.

    `time_dim`: the time axis of `inputs` (1 for batch_first sequences, 0 otherwise). The loss
    is `loss_fn(model(inputs), targets)`; without a loss_fn it is the sum of the model's
    outputs (the profile over time is the model's; only its scale differs). Integer inputs
    (token ids) are measured at the output of the model's first nn.Embedding. The model runs
    in eval mode (no dropout) and its parameters' .grad are left untouched: safe to call
    between training steps. Cost: one forward and one backward pass of `inputs`."""
    if not isinstance(inputs, Tensor):
        raise TypeError(f"inputs must be a tensor, got {type(inputs).__name__}")
    if not -inputs.ndim <= time_dim < inputs.ndim:
        raise ValueError(f"time_dim {time_dim} is outside the input's {inputs.ndim} dimensions")
    time_dim %= inputs.ndim
    captured: list[Tensor] = []
    handle = None
    if inputs.is_floating_point():
        x = inputs.detach().clone().requires_grad_(True)
    else:
        embedding = next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)
        if embedding is None:
            raise ValueError(
                "integer inputs need an nn.Embedding in the model to measure at (or pass a "
                "float input)"
            )
        x = inputs

        def keep(_module: nn.Module, _inputs: object, output: Tensor) -> None:
            if not captured:
                captured.append(output)

        handle = embedding.register_forward_hook(keep)
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad(), _no_cudnn(inputs.device):
            output = _first_tensor(model(x))
            if output is None:
                raise ValueError("the model's output holds no tensor to take a gradient of")
            loss = loss_fn(output, targets) if loss_fn is not None else output.float().sum()
            wrt = x if not captured else captured[0]
            if not wrt.requires_grad:  # a frozen embedding: nothing reaches it
                return torch.zeros(inputs.shape[time_dim], device=inputs.device)
            (grad,) = torch.autograd.grad(loss, wrt, allow_unused=True)
    finally:
        model.train(was_training)
        if handle is not None:
            handle.remove()
    steps = inputs.shape[time_dim]
    if grad is None:
        return torch.zeros(steps, device=inputs.device)
    return grad.detach().float().movedim(time_dim, 0).reshape(steps, -1).norm(dim=1)


def log10_first_over_last(norms: Tensor) -> Tensor:
    """log10 of the gradient norm at the first time step over the one at the last, as a 0-d
    tensor (read later, off the training thread): -inf when nothing reaches the first step."""
    return torch.log10(norms[0].double() / norms[-1].double())


def time_summary(norms: list[float], time_dim: int, epoch: int) -> dict[str, Any]:
    """What a run keeps of one measurement (JSON: finite numbers or None): the steps, the norm
    at the first and the last time step, their log10 ratio, and log10 of the norm at up to
    PROFILE_POINTS evenly spaced steps."""
    steps = len(norms)
    at = sorted(
        {round(i * (steps - 1) / max(1, PROFILE_POINTS - 1)) for i in range(PROFILE_POINTS)}
    )
    first, last = (norms[0], norms[-1]) if norms else (math.nan, math.nan)

    def log10(v: float) -> float | None:
        return math.log10(v) if math.isfinite(v) and v > 0 else None

    ratio = (
        log10(first / last) if math.isfinite(first) and math.isfinite(last) and last > 0 else None
    )
    return {
        "epoch": epoch,
        "time_dim": time_dim,
        "steps": steps,
        "first": first if math.isfinite(first) else None,
        "last": last if math.isfinite(last) else None,
        # None where the first step's gradient is exactly 0 (underflowed): see first_zero.
        "log10_first_over_last": ratio,
        "first_zero": first == 0.0 and math.isfinite(last) and last > 0,
        "profile_steps": at if steps else [],
        "profile_log10": [log10(norms[i]) for i in at] if steps else [],
    }
