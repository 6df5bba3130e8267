"""What a watched model is and how its gradient flows, learnt once, cheaply, from the model itself.

- Activation kinds: the activation module that follows each weight (pass-through modules such as
  Dropout and Identity skipped), for the ReLU family, sigmoid, tanh and GELU-like activations;
  a functional activation (`F.relu` in `forward`) is measured on the next layer's input.
- Backward order: the order in which the first backward pass delivers each weight's gradient
  (post-accumulate-grad hooks, removed after the first optimizer step: no cost afterwards), so
  rules that need depth read "nearest the loss first", not registration order.
- Contents: which optimizer, activations, normalisation, attention, recurrent layers and
  residual connections the model has (a residual add is found once, in the autograd graph of
  the first training forward pass), so cures never suggest what the run already does.
- Probe with labels: predicted classes (collapse: one class for >= 99% of the probe inputs),
  accuracy and the labels' majority rate (chance), or R^2 for regression targets.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

# Module type -> the activation word stored per layer (run_layers.activation, 16 characters).
ACTIVATION_MODULES: dict[type[nn.Module], str] = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu",
    nn.LeakyReLU: "leaky_relu",
    nn.PReLU: "leaky_relu",
    nn.RReLU: "leaky_relu",
    nn.ELU: "elu",
    nn.SELU: "elu",
    nn.CELU: "elu",
    nn.Sigmoid: "sigmoid",
    nn.Hardsigmoid: "sigmoid",
    nn.Tanh: "tanh",
    nn.Hardtanh: "tanh",
    nn.Softsign: "tanh",
    nn.GELU: "gelu",
    nn.SiLU: "gelu",
    nn.Mish: "gelu",
    nn.Hardswish: "gelu",
}
# Modules that pass their input on unchanged in shape and kind: looked through when finding a
# weight's activation.
PASS_THROUGH: tuple[type[nn.Module], ...] = (
    nn.Dropout,
    nn.Dropout1d,
    nn.Dropout2d,
    nn.Dropout3d,
    nn.AlphaDropout,
    nn.Identity,
    nn.Flatten,
)
_OPTIMIZERS_ADAPTIVE = (
    "Adam",
    "AdamW",
    "Adamax",
    "NAdam",
    "RAdam",
    "Adagrad",
    "RMSprop",
    "Adadelta",
)
COLLAPSE_TOP_FRAC = 0.99  # one class predicted for at least this share of the probe inputs
_GRAPH_NODES = 20_000  # the residual search gives up on larger graphs (one-off cost bound)


def activation_after(entries: list[tuple[str, nn.Module]], i: int) -> tuple[nn.Module, str] | None:
    """The activation module that follows entry i (leaf modules in registration order, past
    pass-through ones), or None when the next leaf is anything else."""
    for _, module in entries[i + 1 :]:
        if any(module.children()):
            continue
        kind = ACTIVATION_MODULES.get(type(module))
        if kind is not None:
            return module, kind
        if isinstance(module, PASS_THROUGH):
            continue
        return None
    return None


def model_contents(model: nn.Module, optimizer: Any) -> dict[str, Any]:
    """What the model is made of, as words the diagnosis' cures read."""
    names = {type(m).__name__ for m in model.modules()}
    acts = sorted(
        {ACTIVATION_MODULES[type(m)] for m in model.modules() if type(m) in ACTIVATION_MODULES}
    )
    opt = type(optimizer).__name__
    return {
        "optimizer": opt,
        "adaptive_optimizer": opt in _OPTIMIZERS_ADAPTIVE,
        "activations": acts,
        "normalisation": any("Norm" in n for n in names),
        "attention": any("Attention" in n or n.startswith("Transformer") for n in names),
        "recurrent": any(
            n in ("RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell") for n in names
        ),
        "gated_recurrent": any(n in ("LSTM", "GRU", "LSTMCell", "GRUCell") for n in names),
        # Built-in transformer layers add their input back (a residual) by construction.
        "residual": any(n in ("TransformerEncoderLayer", "TransformerDecoderLayer") for n in names),
    }


def has_residual_add(output: Tensor) -> bool:
    """Whether the autograd graph of `output` holds a residual add: an addition whose one
    branch reaches a strict subset of the weights the other branch reaches (x + f(x))."""
    root = output.grad_fn
    if root is None:
        return False
    reach: dict[Any, frozenset[int]] = {}
    order: list[Any] = []
    stack: list[tuple[Any, bool]] = [(root, False)]
    seen: set[Any] = set()
    while stack:  # iterative post-order: deep graphs must not hit Python's recursion limit
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if node in seen:
            continue
        seen.add(node)
        if len(seen) > _GRAPH_NODES:
            return False
        stack.append((node, True))
        for child, _ in node.next_functions:
            if child is not None and child not in seen:
                stack.append((child, False))
    for node in order:
        own = frozenset([id(node.variable)]) if hasattr(node, "variable") else frozenset()
        parts = [reach.get(c, frozenset()) for c, _ in node.next_functions if c is not None]
        reach[node] = own.union(*parts)
        if node.name().startswith("AddBackward") and len(parts) == 2:
            a, b = parts
            if (a < b and b - a) or (b < a and a - b):
                return True
    return False


class FirstBackward:
    """Records the order in which the first backward pass delivers each layer's gradient, and
    whether the first training forward pass adds a residual; removes its hooks once done."""

    def __init__(self, model: nn.Module, params: list[nn.Parameter]) -> None:
        self.order: list[int] = []
        self.residual: bool | None = None
        self._handles: list[Any] = []
        for index, param in enumerate(params):
            if hasattr(param, "register_post_accumulate_grad_hook"):
                self._handles.append(param.register_post_accumulate_grad_hook(self._arrived(index)))
        self._forward = model.register_forward_hook(self._look)

    def _arrived(self, index: int) -> Callable[[Tensor], None]:
        def hook(_param: Tensor) -> None:
            if index not in self.order:
                self.order.append(index)

        return hook

    def _look(self, _module: nn.Module, _inputs: object, output: object) -> None:
        out = _first_tensor(output)
        if out is None or out.grad_fn is None:
            return  # an eval pass under no_grad: wait for a training one
        self._forward.remove()
        try:
            self.residual = has_residual_add(out)
        except Exception:  # noqa: BLE001 - a graph we cannot walk says nothing about residuals
            self.residual = None

    def done(self) -> None:
        """The first optimizer step: every gradient of the first backward has arrived."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._forward.remove()


def _first_tensor(output: object) -> Tensor | None:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, tuple | list):
        return next((o for o in output if isinstance(o, Tensor)), None)
    if isinstance(output, dict):
        return next((o for o in output.values() if isinstance(o, Tensor)), None)
    logits = getattr(output, "logits", None)  # Hugging Face ModelOutput
    return logits if isinstance(logits, Tensor) else None


def split_labels(model: nn.Module, probe: object) -> tuple[object, Tensor | None]:
    """`probe=(x, y)`: the input and the labels when the model's forward takes one input and
    the tuple's second item holds one target per input; otherwise the probe as given (a tuple
    is then the model's several inputs)."""
    if not (
        isinstance(probe, tuple)
        and len(probe) == 2
        and all(isinstance(p, Tensor) for p in probe)
        and probe[0].ndim >= 1
        and 1 <= probe[1].ndim <= 2
        and probe[1].shape[0] == probe[0].shape[0]
    ):
        return probe, None
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return probe, None
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    if len(positional) == 1 or (len(required) == 1 and not varargs and probe[1].ndim == 1):
        return probe[0], probe[1]
    return probe, None


def labels_kind(labels: Tensor) -> str:
    """ "classes" for integer/bool labels (or floats that are all whole numbers in a few values),
    else "regression"."""
    if not labels.is_floating_point():
        return "classes"
    flat = labels.reshape(-1)
    whole = bool(torch.all(flat == flat.round())) and flat.unique().numel() <= 50
    return "classes" if whole else "regression"


def majority_rate(labels: Tensor) -> float:
    flat = labels.reshape(-1).long()
    counts = torch.bincount(flat - flat.min())
    return float(counts.max()) / max(1, flat.numel())


def predicted_classes(output: Tensor) -> Tensor:
    """Each input's predicted class: argmax of several outputs; for one output, above 0 (a
    logit) or above 0.5 (a probability in [0, 1])."""
    out = output.reshape(output.shape[0], -1) if output.ndim else output.reshape(1, 1)
    if out.shape[1] > 1:
        return out.argmax(dim=1)
    one = out[:, 0]
    prob = bool(torch.all((one >= 0) & (one <= 1)))
    return (one > (0.5 if prob else 0.0)).long()


@torch.no_grad()
def probe_outcome(output: Tensor, labels: Tensor | None) -> dict[str, float]:
    """From the probe's output: the share of inputs given the most common predicted class
    (classifiers only) and, with labels, accuracy and chance (or R^2 for regression)."""
    result: dict[str, float] = {}
    out = output.float()
    kind = labels_kind(labels) if labels is not None else None
    classifier = kind == "classes" or (kind is None and out.ndim >= 2 and out.shape[-1] > 1)
    if kind == "regression":
        y = labels.float().reshape(out.shape[0], -1).to(out.device)
        pred = out.reshape(out.shape[0], -1)
        if pred.shape == y.shape:
            var = float(((y - y.mean(dim=0)) ** 2).mean())
            mse = float(((pred - y) ** 2).mean())
            if var > 0:
                result["r2"] = 1 - mse / var
        return result
    if out.ndim < 1 or out.shape[0] < 2 or not bool(torch.isfinite(out).all()):
        return result
    if classifier:
        pred = predicted_classes(out)
        counts = torch.bincount(pred - pred.min())
        result["top_class_frac"] = float(counts.max()) / pred.numel()
        if labels is not None:
            y = labels.reshape(-1).long().to(pred.device)
            if y.numel() == pred.numel():
                result["accuracy"] = float((pred == y).float().mean())
                result["chance"] = majority_rate(y)
    return result


class NextInputs:
    """During the probe pass: each layer module's first input and the order modules run in, so a
    layer followed by a functional activation (`F.relu(self.fc(x))`) is measured on what the
    next layer receives."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.order: list[int] = []  # module ids in call order
        self.inputs: dict[int, Tensor] = {}
        self._handles = [m.register_forward_pre_hook(self._seen) for m in dict.fromkeys(modules)]

    def _seen(self, module: nn.Module, inputs: tuple[object, ...]) -> None:
        key = id(module)
        if key in self.inputs or not inputs or not isinstance(inputs[0], Tensor):
            return
        x = inputs[0]
        if x.is_floating_point() and x.ndim >= 1:
            self.order.append(key)
            self.inputs[key] = x.detach().to(torch.float32, copy=True).reshape(1, x.shape[0], -1)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()

    def functional(self, modules: list[nn.Module], acts: dict[int, Tensor]) -> dict[int, Tensor]:
        """Layer index -> the next layer's input, for layers (by their module) whose output the
        next layer receives through a ReLU-like function: the same size per input, no negative
        value and at least one exact zero (a ReLU's mark). Others are left out."""
        found: dict[int, Tensor] = {}
        for i, module in enumerate(modules):
            own = acts.get(i)
            key = id(module)
            if own is None or key not in self.order:
                continue
            at = self.order.index(key)
            if at + 1 >= len(self.order):
                continue
            nxt = self.inputs[self.order[at + 1]]
            if nxt.shape[1:] != own.shape[1:] or nxt.shape[2] == 0:
                continue
            if bool((nxt >= 0).all()) and bool((nxt == 0).any()) and not torch.equal(nxt, own):
                found[i] = nxt
        return found


class Lookout:
    """The once-per-run facts (backward order, residual adds, contents) and the live spike
    check of a watched model; `on_warning` gets each warning on the thread that found it."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: Any,
        params: list[nn.Parameter],
        groups: list[tuple[list[int], Any]],
        on_warning: Callable[[Any], None] | None,
        steps_of: list[Callable[[int], int]] | None = None,
    ) -> None:
        """`steps_of`, per group: its measured steps (1-based) -> the optimizer steps that
        warnings name (with watch(every=N) they differ)."""
        from gradscope.analysis.spikes import SpikeChecker

        self.contents = model_contents(model, optimizer)
        self.first: FirstBackward | None = FirstBackward(model, params)
        self.backward_order: list[int] = []
        self.on_warning = on_warning
        for g, (indices, stats) in enumerate(groups):
            checker = SpikeChecker(indices, self._warn, step_of=steps_of[g] if steps_of else None)
            # One host copy per block of steps, on the thread that reduces it.
            stats.on_block = lambda norms, done, c=checker: c.block(
                norms[:, :, 0].detach().cpu().numpy(), done
            )

    def _warn(self, warning: Any) -> None:
        if self.on_warning is not None:
            self.on_warning(warning)

    def stepped(self) -> None:
        """The first optimizer step: the first backward pass is over."""
        first, self.first = self.first, None
        if first is None:
            return
        first.done()
        self.backward_order = list(first.order)
        if first.residual:
            self.contents["residual"] = True

    def facts(self) -> dict[str, Any]:
        """What the run's summary keeps: contents and the backward order (nearest the loss
        first, as the gradients arrived)."""
        return {**self.contents, "backward_order": list(self.backward_order)}
