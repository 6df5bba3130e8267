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
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import Tensor, nn

from gradscope.api import insight
from gradscope.api.distributed import kind_of, sharded_weights
from gradscope.runner.gradient_stats import EpochGradStats, GradStatsFn, activation_stats
from gradscope.vocab.custom import MAX_KIND_CHARS
from gradscope.vocab.records import LayerInfo

# A module's own parameter is a layer's weight when it is named like one: `weight` (Linear,
# Conv*, Embedding, norms), `weight_ih_l0`/`weight_hh_l0` (RNN, LSTM, GRU), `in_proj_weight`
# (MultiheadAttention). Biases and other parameters are not layers (as in built-in runs).
# Below this many weights on a device, a block of steps is reduced in line: handing it to the
# measuring thread costs more than the reduction (small CNN, 1.5k weights, on 2 busy cores:
# 0.22 ms per step threaded, 0.06 ms in line); above it, the thread overlaps the reduction
# with training (20-layer MLP, 78k weights, one warm process, 41-61 paired epochs: 1.07-1.09x
# a bare loop threaded, 1.10-1.12x in line).
INLINE_BELOW = 16_384


def _is_weight(name: str) -> bool:
    return name == "weight" or name.startswith("weight_") or name.endswith("_weight")


def unwrap(model: nn.Module) -> nn.Module:
    """The module whose parameters train: a torch.compile'd model's original module, a
    DistributedDataParallel's (or DataParallel's) `.module`, in any nesting (the same
    parameters, so hooks and names are those of the eager model: no `module.` prefix)."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(model, wrappers):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner


@dataclass(frozen=True)
class Layer:
    """One recorded weight, with the module whose output is its activation."""

    info: LayerInfo
    param: nn.Parameter
    module: nn.Module  # owns the weight
    act_module: nn.Module  # the module whose output the probe measures


def find_layers(model: nn.Module) -> list[Layer]:
    """Every trainable weight of the model, in module order, each once (tied weights are one
    layer). A layer's activation is that of the activation module next after it in registration
    order, past Dropout/Identity (gradscope.api.insight.ACTIVATION_MODULES), else "none" (the
    probe then measures the layer's own output, or a functional ReLU on the next layer's
    input)."""
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
            # The activation module after it (ReLU family, sigmoid, tanh, GELU-like; past
            # Dropout/Identity): gradscope.api.insight.ACTIVATION_MODULES.
            if (found := insight.activation_after(entries, i)) is not None:
                act_module, activation = found
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
                kind=kind_of(module)[:MAX_KIND_CHARS],
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

    def __init__(
        self,
        indices: list[int],
        params: list[nn.Parameter],
        executor: Executor,
        low_memory: bool | None = None,
    ):
        self.indices = indices
        self.params = params
        self.device = params[0].device
        sizes = [p.numel() for p in params]
        self.inline = sum(sizes) < INLINE_BELOW
        shapes = [p.shape for p in params]
        self.stats = EpochGradStats(
            sizes,
            1,
            self.device,
            None if self.inline else executor,
            shapes=shapes,
            low_memory=low_memory,
        )

    def step(self) -> None:
        # The gradients as they are, copied by one _foreach_copy_ into per-weight views of the
        # ring (strided gradients, e.g. channels_last convolutions, are read in logical order;
        # fp16/bf16 upcast on the way); a weight without a gradient this step (unused by the
        # forward pass) counts as zeros: its slot is zeroed, no zeros kept per weight. The
        # loop is Python only (~2 us for 20 weights).
        grads: list[Tensor | None] = [p.grad for p in self.params]
        for i, g in enumerate(grads):
            if g is not None and g.is_sparse:  # nn.Embedding(sparse=True)
                grads[i] = g.to_dense()
        self.stats.step(grads)

    def weights(self) -> Tensor:
        """The group's weights now, flat and float32 (a copy)."""
        return torch.cat([p.detach().reshape(-1) for p in self.params]).to(torch.float32)

    def start_epoch(self) -> None:
        """Start (or restart) an epoch from the weights as they are now."""
        if self.stats.lean:  # the start copy is refilled in place, weight by weight
            self.stats.begin_params([p.detach() for p in self.params])
        else:
            self.stats.begin(self.weights())

    def close(self) -> tuple[GradStatsFn, Tensor | tuple[Tensor, Tensor]]:
        """End the epoch: its finishing function and what it needs of the weights (a flat
        copy; for a large group, its weight and update norms, taken now without a copy), and
        start the next epoch from the weights now."""
        if self.stats.lean:
            weights = self.stats.close_params([p.detach() for p in self.params])
            finish = self.stats.finish_later()
            self.stats.begin(None)
            return finish, weights
        flat = self.weights()
        finish = self.stats.finish_later()
        self.stats.begin(flat)
        return finish, flat

    def settle(self) -> None:
        """Wait for work other processes wait on (a sharded group's collectives); none here."""


@dataclass
class EpochPart:
    """What the training thread hands the measuring thread at an epoch's end."""

    steps: int
    finishers: list[tuple[list[int], GradStatsFn, Tensor]]  # per device group
    acts: dict[int, Tensor]  # layer index -> [1, N, units], from the probe batch
    output: Tensor | None  # the model's output on the probe batch
    labels: Tensor | None = None  # the probe's labels (probe=(x, y))
    kinds: dict[int, str] = field(default_factory=dict)  # functional activations found
    # watch(..., time_dim=...): the probe's gradient norm per time step (through_time).
    time_norms: Tensor | None = None


def _owners(optimizers: list[torch.optim.Optimizer], layers: list[Layer]) -> list[int]:
    """Per layer, the index of the optimizer that updates its weight (the first holding it);
    a weight no optimizer holds is measured at the first one's steps."""
    held: dict[int, int] = {}
    for k, optimizer in reversed(list(enumerate(optimizers))):
        for group in optimizer.param_groups:
            for param in group["params"]:
                held[id(param)] = k
    return [held.get(id(layer.param), 0) for layer in layers]


class Watcher:
    """Hooks one or several optimizers; measures every `every`-th step of each, for the
    watched model's weights that optimizer updates."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | list[torch.optim.Optimizer],
        executor: Executor,
        probe: object | None = None,
        on_warning: Callable[[object], None] | None = None,
        *,
        every: int = 1,
        time_dim: int | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        low_memory: bool | None = None,
    ) -> None:
        self.model = model
        self.optimizers = list(optimizer) if isinstance(optimizer, list | tuple) else [optimizer]
        self.every = every
        self.total_steps = 0  # optimizer steps so far, measured or not (run.step)
        self.layers = find_layers(model)
        self.probe, self.labels = insight.split_labels(unwrap(model), probe)
        if time_dim is not None and not isinstance(self.probe, Tensor):
            raise ValueError(
                "time_dim needs a probe batch of sequences: probe=x or probe=(x, y), x a tensor"
            )
        if loss_fn is not None and self.labels is None:
            raise ValueError("loss_fn needs the probe's targets: probe=(x, y)")
        self.time_dim, self.loss_fn = time_dim, loss_fn
        owners = _owners(self.optimizers, self.layers)
        by_key: dict[tuple[int, torch.device], list[int]] = {}
        for i, layer in enumerate(self.layers):
            by_key.setdefault((owners[i], layer.param.device), []).append(i)
        make: Callable[..., _DeviceGroup] = partial(_DeviceGroup, low_memory=low_memory)
        if sharded_weights([layer.param for layer in self.layers]):
            if low_memory:
                raise ValueError(
                    "low_memory=True is not available for FSDP shards: each step's combine is "
                    "a collective, kept off the training thread"
                )
            # FSDP2: each rank holds a shard of every weight (gradscope.api.sharded).
            from gradscope.api.sharded import group_maker

            make = group_maker([layer.param for layer in self.layers])
        self.groups = [
            make(idx, [self.layers[i].param for i in idx], executor) for idx in by_key.values()
        ]
        # Per optimizer: its groups, and its steps so far (the sampling counts them).
        self._groups_of = [
            [g for (owner, _), g in zip(by_key, self.groups, strict=True) if owner == k]
            for k in range(len(self.optimizers))
        ]
        self._calls = [0] * len(self.optimizers)
        self.steps = 0
        for group in self.groups:
            group.start_epoch()
        self._base = 0  # optimizer steps before this watcher (run.py sets it on a re-watch)
        # Backward order, residual adds, contents, and the live spike check (gradscope.api.insight).
        # A group's m-th measured step is its optimizer's call (m - 1) * every: warnings name
        # that optimizer step (run.step then), not the measured count.
        self.lookout = insight.Lookout(
            unwrap(model),
            self.optimizers[0],
            [layer.param for layer in self.layers],
            [(g.indices, g.stats) for g in self.groups],
            on_warning,
            [self._optimizer_step for _ in self.groups],
        )
        self._handles = [
            opt.register_step_pre_hook(self._pre_step_of(k))
            for k, opt in enumerate(self.optimizers)
        ]

    def _optimizer_step(self, measured: int) -> int:
        """The optimizer step (run.step at the time) of a group's `measured`-th measured step."""
        return self._base + (measured - 1) * self.every + 1

    def _pre_step_of(self, k: int) -> Callable[[object, object, object], None]:
        groups = self._groups_of[k]

        def pre_step(_optimizer: object, _args: object, _kwargs: object) -> None:
            calls = self._calls[k]
            self._calls[k] = calls + 1
            if calls + 1 > self.total_steps - self._base:
                self.total_steps = self._base + calls + 1
            if calls % self.every == 0:  # steps 1, 1 + every, 1 + 2 * every, ...
                for group in groups:
                    group.step()
                self.steps += 1
            if self.lookout.first is not None:
                self.lookout.stepped()

        return pre_step

    def drive(self) -> list[Callable[[], None]]:
        """Remove the optimizer hooks and return, per optimizer, a function that measures its
        step when called: for trainers that run backward inside `optimizer.step(closure)`
        (Lightning), where a step pre-hook fires before the gradient exists
        (gradscope.integrations.lightning calls them from on_before_optimizer_step)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        hooks = [self._pre_step_of(k) for k in range(len(self.optimizers))]
        return [lambda hook=hook: hook(None, None, None) for hook in hooks]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        for group in self.groups:
            group.settle()
        self.lookout.stepped()  # hooks of a first backward that never stepped

    def end_epoch(self) -> EpochPart:
        """Close the epoch's statistics (reduced later, on the measuring thread), start the
        next epoch's, and run the probe batch. Copies the weights once; no host sync."""
        finishers = []
        for group in self.groups:
            if group.stats.steps:
                # Closed on the measuring thread even when blocks are reduced in line: the
                # ring blocks it still reads stay untouched until it has run.
                finishers.append((group.indices, *group.close()))
            else:  # no measured step this epoch: nothing to finish; restart from these weights
                group.start_epoch()
        steps, self.steps = self.steps, 0
        acts, output, kinds = self._run_probe() if self.probe is not None else ({}, None, {})
        time_norms = None
        if self.time_dim is not None:  # one more forward and backward pass of the probe
            from gradscope.api.through_time import time_gradients

            time_norms = time_gradients(
                unwrap(self.model),
                self.probe,  # type: ignore[arg-type]
                self.labels,
                self.loss_fn,
                time_dim=self.time_dim,
            )
        return EpochPart(steps, finishers, acts, output, self.labels, kinds, time_norms)

    @torch.no_grad()
    def _run_probe(self) -> tuple[dict[int, Tensor], Tensor | None, dict[int, str]]:
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
        nexts = insight.NextInputs([layer.module for layer in self.layers])
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
            nexts.remove()
            model.train(was_training)
        # A layer with no activation module may feed a functional ReLU: measured on the next
        # layer's input (gradscope.api.insight.NextInputs.functional).
        bare = {i: a for i, a in captured.items() if self.layers[i].info.activation == "none"}
        functional = nexts.functional([layer.module for layer in self.layers], bare)
        captured.update(functional)
        out = insight._first_tensor(output)
        return (
            captured,
            out.detach().float() if isinstance(out, Tensor) else None,
            dict.fromkeys(functional, "relu"),
        )


def probe_statistics(
    layers: list[Layer], acts: dict[int, Tensor], kinds: dict[int, str] | None = None
) -> dict[int, dict[str, Tensor]]:
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
        found = kinds or {}
        health = activation_stats(
            [acts[i] for i in idx], [found.get(i, layers[i].info.activation) for i in idx]
        )
        for row, i in enumerate(idx):
            result[i] = {k: v[row, 0] for k, v in health.items()}
    return result


def prediction_spread(output: Tensor) -> Tensor:
    """Std across the probe batch of each output value, averaged over output values: 0 means
    the model gives every input the same output (a collapsed network)."""
    flat = output.reshape(output.shape[0], -1) if output.ndim else output.reshape(1, 1)
    return flat.std(dim=0, unbiased=False).mean()
