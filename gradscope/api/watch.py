"""Watching a user's model: which weights are layers, and per-step gradient statistics read by an
optimizer step pre-hook.

The hook runs after backward() and before the optimizer changes anything, so gradient
accumulation over micro-batches and any zero_grad() placement see exactly the gradient the step
uses (and a GradScaler has already unscaled it: `scaler.step(opt)` unscales before it calls
`opt.step()`, and skips the step, hook included, when the gradient overflowed). Per step the hook
only copies the weights' gradients into gradscope.runner.gradient_stats.EpochGradStats' ring (one
_foreach_copy_
per device: no `.item()`, no host sync); the rings are reduced a block of steps at a time on the
run's measuring thread, as the built-in loop does. Statistics stay on each weight's device.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from gradscope.runner.gradient_stats import EpochGradStats, GradStatsFn, activation_stats
from gradscope.vocab.custom import MAX_KIND_CHARS
from gradscope.vocab.records import LayerInfo

# A module's own parameter is a layer's weight when it is named like one: `weight` (Linear,
# Conv*, Embedding, norms), `weight_ih_l0`/`weight_hh_l0` (RNN, LSTM, GRU), `in_proj_weight`
# (MultiheadAttention). Biases and other parameters are not layers (as in built-in runs).
_ACTIVATIONS: dict[type[nn.Module], str] = {nn.ReLU: "relu", nn.Sigmoid: "sigmoid"}
# Below this many weights on a device, a block of steps is reduced in line: handing it to the
# measuring thread costs more than the reduction (small CNN, 1.5k weights, on 2 busy cores:
# 0.22 ms per step threaded, 0.06 ms in line); above it, the thread overlaps the reduction
# with training (20-layer MLP, 78k weights, one warm process, 41-61 paired epochs: 1.07-1.09x
# a bare loop threaded, 1.10-1.12x in line).
INLINE_BELOW = 16_384


def _is_weight(name: str) -> bool:
    return name == "weight" or name.startswith("weight_") or name.endswith("_weight")


def unwrap(model: nn.Module) -> nn.Module:
    """The module whose parameters train: a torch.compile'd model's original module (the same
    parameters, so hooks and names are those of the eager model)."""
    return getattr(model, "_orig_mod", model)


@dataclass(frozen=True)
class Layer:
    """One recorded weight, with the module whose output is its activation."""

    info: LayerInfo
    param: nn.Parameter
    module: nn.Module  # owns the weight
    act_module: nn.Module  # the module whose output the probe measures


def find_layers(model: nn.Module) -> list[Layer]:
    """Every trainable weight of the model, in module order, each once (tied weights are one
    layer). A layer's activation is "relu"/"sigmoid" when the next leaf module in registration
    order is nn.ReLU/nn.Sigmoid (the usual Sequential), else "none" (a functional activation
    cannot be seen; the probe then measures the layer's own output)."""
    entries = list(unwrap(model).named_modules())
    seen: set[int] = set()
    layers: list[Layer] = []
    for i, (path, module) in enumerate(entries):
        for pname, param in module.named_parameters(recurse=False):
            if not _is_weight(pname) or not param.requires_grad or param.numel() == 0:
                continue
            if id(param) in seen:
                continue
            seen.add(id(param))
            act_module, activation = module, "none"
            following = next((m for _, m in entries[i + 1 :] if not any(m.children())), None)
            if following is not None and type(following) in _ACTIVATIONS:
                act_module, activation = following, _ACTIVATIONS[type(following)]
            shape = tuple(param.shape)
            fan_out = shape[0] if shape else 1
            own = pname == "weight"
            n_params = (
                sum(p.numel() for p in module.parameters(recurse=False)) if own else param.numel()
            )
            name = path if own and path else f"{path}.{pname}" if path else pname
            info = LayerInfo(
                layer=len(layers),
                name=name[:200],
                kind=type(module).__name__[:MAX_KIND_CHARS],
                activation=activation,
                fan_in=max(1, param.numel() // max(1, fan_out)),
                fan_out=fan_out,
                n_params=n_params,
                shape=json.dumps(list(shape)),
            )
            layers.append(Layer(info, param, module, act_module))
    return layers


class _DeviceGroup:
    """The layers whose weights live on one device, with their statistics on that device."""

    def __init__(self, indices: list[int], params: list[nn.Parameter], executor: Executor):
        self.indices = indices
        self.params = params
        self.device = params[0].device
        sizes = [p.numel() for p in params]
        self.inline = sum(sizes) < INLINE_BELOW
        shapes = [p.shape for p in params]
        self.stats = EpochGradStats(
            sizes, 1, self.device, None if self.inline else executor, shapes=shapes
        )
        # A weight without a gradient this step (unused by the forward pass) counts as zeros.
        self._zeros = [torch.zeros(shape, device=self.device) for shape in shapes]

    def step(self) -> None:
        # The gradients as they are, copied by one _foreach_copy_ into per-weight views of the
        # ring (strided gradients, e.g. channels_last convolutions, are read in logical order;
        # fp16/bf16 upcast on the way). The loop is Python only (~2 us for 20 weights).
        grads = [p.grad for p in self.params]
        for i, g in enumerate(grads):
            if g is None:
                grads[i] = self._zeros[i]
            elif g.is_sparse:  # nn.Embedding(sparse=True)
                grads[i] = g.to_dense()
        self.stats.step(grads)

    def weights(self) -> Tensor:
        """The group's weights now, flat and float32 (a copy)."""
        return torch.cat([p.detach().reshape(-1) for p in self.params]).to(torch.float32)


@dataclass
class EpochPart:
    """What the training thread hands the measuring thread at an epoch's end."""

    steps: int
    finishers: list[tuple[list[int], GradStatsFn, Tensor]]  # per device group
    acts: dict[int, Tensor]  # layer index -> [1, N, units], from the probe batch
    output: Tensor | None  # the model's output on the probe batch


class Watcher:
    """Hooks one optimizer; measures every step of the watched model's weights."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        executor: Executor,
        probe: object | None = None,
    ) -> None:
        self.model = model
        self.layers = find_layers(model)
        self.probe = probe
        by_device: dict[torch.device, list[int]] = {}
        for i, layer in enumerate(self.layers):
            by_device.setdefault(layer.param.device, []).append(i)
        self.groups = [
            _DeviceGroup(idx, [self.layers[i].param for i in idx], executor)
            for idx in by_device.values()
        ]
        self.steps = 0
        for group in self.groups:
            group.stats.begin(group.weights())
        self._handle = optimizer.register_step_pre_hook(self._pre_step)

    def _pre_step(self, _optimizer: object, _args: object, _kwargs: object) -> None:
        for group in self.groups:
            group.step()
        self.steps += 1

    def remove(self) -> None:
        self._handle.remove()

    def end_epoch(self) -> EpochPart:
        """Close the epoch's statistics (reduced later, on the measuring thread), start the
        next epoch's, and run the probe batch. Copies the weights once; no host sync."""
        finishers = []
        if self.steps:
            for group in self.groups:
                weights = group.weights()
                # Closed on the measuring thread even when blocks are reduced in line: the
                # ring blocks it still reads stay untouched until it has run.
                finishers.append((group.indices, group.stats.finish_later(), weights))
                group.stats.begin(weights)
        else:  # no optimizer step this epoch: nothing to finish; restart from these weights
            for group in self.groups:
                group.stats.begin(group.weights())
        steps, self.steps = self.steps, 0
        acts, output = self._run_probe() if self.probe is not None else ({}, None)
        return EpochPart(steps, finishers, acts, output)

    @torch.no_grad()
    def _run_probe(self) -> tuple[dict[int, Tensor], Tensor | None]:
        """One forward pass of the probe batch in eval mode, capturing each layer's activation
        (the first call of its module) through forward hooks removed at once."""
        model = unwrap(self.model)
        captured: dict[int, Tensor] = {}
        handles = []

        def capture(index: int) -> Callable[..., None]:
            def hook(_module: nn.Module, _inputs: object, output: object) -> None:
                out = output[0] if isinstance(output, tuple | list) and output else output
                if index not in captured and isinstance(out, Tensor) and out.is_floating_point():
                    # A copy: an in-place op later in the forward pass must not change it.
                    captured[index] = (
                        out.detach()
                        .to(torch.float32, copy=True)
                        .reshape(1, out.shape[0] if out.ndim else 1, -1)
                    )

            return hook

        for i, layer in enumerate(self.layers):
            handles.append(layer.act_module.register_forward_hook(capture(i)))
        was_training = model.training
        model.eval()
        try:
            probe = self.probe
            if isinstance(probe, dict):  # several inputs: model(**probe) or model(*probe)
                output = model(**probe)
            elif isinstance(probe, tuple):
                output = model(*probe)
            else:
                output = model(probe)
        finally:
            for handle in handles:
                handle.remove()
            model.train(was_training)
        out = output[0] if isinstance(output, tuple | list) and output else output
        return captured, out.detach().float() if isinstance(out, Tensor) else None


def probe_statistics(layers: list[Layer], acts: dict[int, Tensor]) -> dict[int, dict[str, Tensor]]:
    """Activation health per probed layer (gradscope.runner.gradient_stats.activation_stats), as
    0-d tensors."""
    if not acts:
        return {}
    indices = sorted(acts)
    # One call per device: activation_stats stacks its per-layer results.
    result: dict[int, dict[str, Tensor]] = {}
    by_device: dict[torch.device, list[int]] = {}
    for i in indices:
        by_device.setdefault(acts[i].device, []).append(i)
    for idx in by_device.values():
        health = activation_stats([acts[i] for i in idx], [layers[i].info.activation for i in idx])
        for row, i in enumerate(idx):
            result[i] = {k: v[row, 0] for k, v in health.items()}
    return result


def prediction_spread(output: Tensor) -> Tensor:
    """Std across the probe batch of each output value, averaged over output values: 0 means
    the model gives every input the same output (a collapsed network)."""
    flat = output.reshape(output.shape[0], -1) if output.ndim else output.reshape(1, 1)
    return flat.std(dim=0, unbiased=False).mean()
