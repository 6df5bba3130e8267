"""K same-shape MLPs computed as one batched model, and their optimizers, on flat tensors.

Why by hand: a solo step of a tiny MLP is ~90% fixed per-op cost on a CPU. Stacking K members
makes every op K times bigger for about the same fixed cost, and writing the backward pass out
(two `bmm` per layer, straight into the gradient buffer) removes autograd's own per-op cost and
the zeroing of gradients. Each formula is the one autograd uses for a solo run
(`sigmoid_backward`, `threshold_backward`, BCE-with-logits' `sigmoid(x) - y`), and the optimizers
are torch.optim's formulas, so a member's numbers equal its solo run's within float32 rounding.

Layout (the one `gradscope.runner.gradient_stats` expects): the flat parameter tensor is a sequence
of blocks,
every layer's weight first (layer-major), then every layer's bias; block b is a contiguous
[K, n_b] array, one row per member. Layer l's weight is viewed as [K, out, in] (nn.Linear's own
layout), its bias as [K, 1, out]. Nothing is ever reduced over the member dimension, so one
member's values (even NaN) cannot reach another's: `bmm` and `baddbmm` multiply member k's
slices only with each other.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from gradscope.runner.networks import MLP

# torch.optim.Adam's defaults, which the solo runner uses.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8

_ACTIVATE: dict[str, Callable[[Tensor], Tensor]] = {
    "sigmoid": torch.sigmoid_,
    "relu": torch.relu_,
}
# The backward formulas autograd itself uses, given the activation's output.
_ACTIVATION_BACKWARD: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "sigmoid": torch.ops.aten.sigmoid_backward,
    "relu": lambda grad, out: torch.ops.aten.threshold_backward(grad, out, 0),
}


def select_members(flat: Tensor, block_sizes: Sequence[int], members: int, keep: Tensor) -> Tensor:
    """A new flat tensor holding only the members (rows) `keep` of every [K, n] block."""
    parts = []
    offset = 0
    for n in block_sizes:
        block = flat[offset : offset + members * n].view(members, n)
        parts.append(block.index_select(0, keep).reshape(-1))
        offset += members * n
    return torch.cat(parts)


def per_member(values: Sequence[float], block_sizes: Sequence[int], device: torch.device) -> Tensor:
    """A flat tensor in the block layout holding member k's value at each of its elements."""
    column = torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)
    return torch.cat([column.expand(-1, n).reshape(-1) for n in block_sizes])


class StackedMLP:
    """The members' parameters as views of one flat tensor; forward and backward by hand."""

    def __init__(self, models: Sequence[MLP], device: torch.device) -> None:
        first = models[0]
        self.activation = first.activation
        self.residual = first.residual
        self.shapes = [(lin.out_features, lin.in_features) for lin in first.linears]
        self.weight_sizes = [out * inp for out, inp in self.shapes]
        self.block_sizes = self.weight_sizes + [out for out, _ in self.shapes]
        self._act = _ACTIVATE[self.activation]
        self._act_backward = _ACTIVATION_BACKWARD[self.activation]
        blocks = []
        for part in ("weight", "bias"):
            for i in range(len(self.shapes)):
                rows = [getattr(m.linears[i], part).detach().reshape(-1) for m in models]
                blocks.append(torch.stack(rows).reshape(-1))
        self.members = len(models)
        self._saved: tuple[list[Tensor], list[Tensor]] | None = None
        self._bind(torch.cat(blocks).to(device))

    def _bind(self, data: Tensor) -> None:
        """Point every per-layer view at `data` and a fresh gradient buffer of the same layout."""
        k = self.members
        self.data = data
        self.grad = torch.zeros_like(data)
        self.weights: list[Tensor] = []
        self.weight_grads: list[Tensor] = []
        self.biases: list[Tensor] = []
        self.bias_grads: list[Tensor] = []
        offset = 0
        for out, inp in self.shapes:
            n = k * out * inp
            self.weights.append(data[offset : offset + n].view(k, out, inp))
            self.weight_grads.append(self.grad[offset : offset + n].view(k, out, inp))
            offset += n
        self.n_weights = offset
        for out, _ in self.shapes:
            self.biases.append(data[offset : offset + k * out].view(k, 1, out))
            self.bias_grads.append(self.grad[offset : offset + k * out].view(k, out))
            offset += k * out
        # x @ W^T as a transposed view: BLAS reads it in place, no copy.
        self.weights_t = [w.transpose(1, 2) for w in self.weights]

    @property
    def flat_weights(self) -> Tensor:
        return self.data[: self.n_weights]

    @property
    def flat_weight_grads(self) -> Tensor:
        return self.grad[: self.n_weights]

    def select(self, keep: Tensor) -> None:
        """Keep only the members at stack positions `keep` (members that finished leave)."""
        data = select_members(self.data, self.block_sizes, self.members, keep)
        self.members = len(keep)
        self._saved = None
        self._bind(data)

    def forward(
        self,
        x: Tensor,
        on_activation: Callable[[Tensor], None] | None = None,
        *,
        members: slice | None = None,
        for_backward: bool = False,
    ) -> Tensor:
        """Logits [K, N] for inputs [K, N, features]. Like `MLP.forward_collect`, each hidden
        layer's activation output [K, N, units], then the output probability, is handed to
        `on_activation` as soon as it is computed (measured while still in cache).
        `members` computes only those stack positions (x then holds only theirs)."""
        h = x
        inputs: list[Tensor] = []
        outputs: list[Tensor] = []
        weights_t, biases = self.weights_t, self.biases
        if members is not None:
            weights_t = [w[members] for w in weights_t]
            biases = [b[members] for b in biases]
        last = len(self.shapes) - 1
        for i in range(last):
            a = self._act(torch.baddbmm(biases[i], h, weights_t[i]))
            if for_backward:
                inputs.append(h)
                outputs.append(a)
            if on_activation is not None:
                on_activation(a)
            h = h + a if (self.residual and i > 0) else a
        logits = torch.baddbmm(biases[last], h, weights_t[last]).squeeze(-1)
        if for_backward:
            inputs.append(h)
            self._saved = (inputs, outputs)
        if on_activation is not None:
            on_activation(torch.sigmoid(logits).unsqueeze(-1))
        return logits

    def backward(self, grad_logits: Tensor) -> None:
        """Write every weight's and bias's gradient into `self.grad` (overwriting, so no
        zeroing is needed) from d(loss)/d(logits) [K, B] of the last `forward(for_backward)`."""
        assert self._saved is not None, "forward(for_backward=True) must come first"
        inputs, outputs = self._saved
        self._saved = None
        last = len(self.shapes) - 1
        g = grad_logits.unsqueeze(-1)  # [K, B, 1]
        torch.bmm(g.transpose(1, 2), inputs[last], out=self.weight_grads[last])
        torch.sum(g, dim=1, out=self.bias_grads[last])
        dh = torch.bmm(g, self.weights[last])
        for i in range(last - 1, -1, -1):
            dz = self._act_backward(dh, outputs[i])
            torch.bmm(dz.transpose(1, 2), inputs[i], out=self.weight_grads[i])
            torch.sum(dz, dim=1, out=self.bias_grads[i])
            if i == 0:
                break
            if self.residual:
                # h_i = h_{i-1} + a_i: the skip passes dh through, plus dz @ W_i, in one op.
                dh = torch.baddbmm(dh, dz, self.weights[i])
            else:
                dh = torch.bmm(dz, self.weights[i])


class StackedOptimizer:
    """SGD (with momentum) or Adam over the flat parameters, with per-member learning rates
    and momenta; torch.optim's formulas, so members match solo runs within float32 rounding.

    Adam is torch's own fused kernel (what `torch.optim.Adam(fused=True)` runs: one pass over
    the flat buffers instead of eight), called directly because the optimizer object's Python
    bookkeeping cost ~5% of a batched step. With one learning rate for every member it updates
    the parameters; otherwise it runs at lr=1 on a zeroed scratch tensor, which then holds
    -m_hat / (sqrt(v_hat) + eps), and each member's lr scales that (Adam's update is linear in
    lr; m and v do not depend on it). SGD is written out: `p -= lr * buf`, `buf = mu * buf + g`.
    """

    def __init__(
        self,
        model: StackedMLP,
        kind: str,
        lrs: Sequence[float],
        momenta: Sequence[float],
    ) -> None:
        self.model = model
        self.kind = kind
        self._lrs = list(lrs)
        self._momenta = list(momenta)
        data = model.data
        # Per-element state in the block layout; Adam's step count is shared (members start
        # together and step together).
        self._state: list[Tensor] = []
        if kind == "adam":
            self._state = [torch.zeros_like(data), torch.zeros_like(data)]
            self._steps = torch.zeros((), dtype=torch.float32, device=data.device)
        elif any(self._momenta):
            self._state = [torch.zeros_like(data)]
        self._rebuild()

    def _rebuild(self) -> None:
        """Per-element rates for the model's current members (at start and after `select`)."""
        device, sizes = self.model.data.device, self.model.block_sizes
        self.lr = per_member(self._lrs, sizes, device)
        if self.kind == "sgd" and self._state:
            self.momentum = per_member(self._momenta, sizes, device)
        self._uniform_lr = len(set(self._lrs)) == 1
        self._scratch = None if self._uniform_lr else torch.empty_like(self.model.data)

    def select(self, keep: Tensor, old_members: int) -> None:
        """Follow `StackedMLP.select` (call it with the stack's size before that call)."""
        sizes = self.model.block_sizes
        self._state = [select_members(s, sizes, old_members, keep) for s in self._state]
        positions = keep.tolist()
        self._lrs = [self._lrs[p] for p in positions]
        self._momenta = [self._momenta[p] for p in positions]
        self._rebuild()

    def step(self) -> None:
        param, grad = self.model.data, self.model.grad
        if self.kind == "adam":
            self._adam(param, grad)
        elif self._state:
            # torch starts the buffer as a copy of the first gradient: 0 * mu + g is the same.
            buf = self._state[0]
            buf.mul_(self.momentum).add_(grad)
            param.addcmul_(buf, self.lr, value=-1.0)
        else:
            param.addcmul_(grad, self.lr, value=-1.0)

    def _adam(self, param: Tensor, grad: Tensor) -> None:
        target = param if self._scratch is None else self._scratch.zero_()
        exp_avg, exp_avg_sq = self._state
        self._steps.add_(1)  # torch.optim counts the step before calling the kernel
        torch._fused_adam_(
            [target],
            [grad],
            [exp_avg],
            [exp_avg_sq],
            [],
            [self._steps],
            amsgrad=False,
            lr=self._lrs[0] if self._uniform_lr else 1.0,
            beta1=ADAM_BETAS[0],
            beta2=ADAM_BETAS[1],
            weight_decay=0.0,
            eps=ADAM_EPS,
            maximize=False,
        )
        if self._scratch is not None:
            param.addcmul_(self._scratch, self.lr)
