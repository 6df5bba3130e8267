"""A pathology zoo: small models of many shapes, recorded through the public API, each with its
ground truth measured here in plain PyTorch (own hooks, own arithmetic: no gradscope code), then
compared with what gradscope's diagnosis says (the `gradscope show --json` reading).

    .venv/bin/python benchmarks/diagnosis_zoo.py [--quick] [--db PATH]

Prints per kind TP/FN/FP, precision and recall; the live warnings' lead time (steps from the
first warning to the first non-finite gradient) on diverging runs; and the false-warning rate on
healthy ones. Ground truth, per run:
- diverged: a loss or gradient became non-finite (the step is kept);
- exploding: a layer's per-step gradient norm reached 100x the median of its first 8 steps,
  and training was unstable with it (`unstable`): the loss became non-finite, or the run ended
  no better than it began (the mean loss of its last epoch at least the median of its first 8
  steps), or the updates broke the net (it ended dead, collapsed or not learning, below).
  Norms that grow while the loss falls are a net waking up from a vanished start;
- vanishing: at the first epoch, the layer farthest from the loss (by construction) has a mean
  gradient norm at most 1e-3 times the layer nearest it; or, for a recurrent model (recorded
  with `watch(..., time_dim=1, loss_fn=...)`), after training, the gradient of the probe's loss
  reaching the input's first time step is at most 1e-3 times the one reaching its last;
- dead / saturated: at the end, more than half the units of a hidden ReLU-like layer are <= 0
  for every probe input / of a sigmoid or tanh layer are within 0.01 of their bounds;
- collapsed: one class predicted for >= 99% of the probe inputs;
- not_learning: probe accuracy within 0.05 of the labels' majority rate (R^2 <= 0.05).
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from gradscope.vocab.warning_kinds import NONFINITE, TREND_WARNINGS

KINDS = ("diverged", "exploding", "vanishing", "collapsed", "not_learning", "saturated", "dead")


# -- models written for the zoo: `self.depth_order` lists the weights input side first ----------
class MLP(nn.Module):
    def __init__(self, d_in: int, width: int, depth: int, out: int, act: str, head_first: bool):
        super().__init__()
        acts = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU}
        body = []
        for i in range(depth):
            body += [nn.Linear(d_in if i == 0 else width, width), acts[act]()]
        if head_first:  # registration order is not depth order
            self.head = nn.Linear(width, out)
            self.body = nn.Sequential(*body)
        else:
            self.body = nn.Sequential(*body)
            self.head = nn.Linear(width, out)
        self.depth_order = [m.weight for m in self.body if isinstance(m, nn.Linear)] + [
            self.head.weight
        ]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class FunctionalMLP(nn.Module):
    """ReLU applied with F.relu in forward: no activation module to see."""

    def __init__(self, d_in: int, width: int, depth: int, out: int):
        super().__init__()
        self.layers = nn.ModuleList(
            [nn.Linear(d_in if i == 0 else width, width) for i in range(depth)]
        )
        self.head = nn.Linear(width, out)
        self.depth_order = [m.weight for m in self.layers] + [self.head.weight]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x)


class CNN(nn.Module):
    def __init__(self, depth: int, out: int, act: str, bn: bool = False):
        super().__init__()
        acts = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
        mods: list[nn.Module] = []
        for i in range(depth):
            mods.append(nn.Conv2d(1 if i == 0 else 8, 8, 3, padding=1))
            if bn:
                mods.append(nn.BatchNorm2d(8))
            mods.append(acts[act]())
        self.body = nn.Sequential(*mods)
        self.head = nn.Linear(8 * 8 * 8, out)
        self.depth_order = [
            m.weight for m in self.body if isinstance(m, nn.Conv2d | nn.BatchNorm2d)
        ]
        self.depth_order.append(self.head.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x.view(-1, 1, 8, 8)).flatten(1))


class ResNet(nn.Module):
    def __init__(self, d_in: int, width: int, blocks: int, out: int, norm: bool):
        super().__init__()
        self.inp = nn.Linear(d_in, width)
        self.blocks = nn.ModuleList([nn.Linear(width, width) for _ in range(blocks)])
        self.norms = nn.ModuleList(
            [nn.LayerNorm(width) if norm else nn.Identity() for _ in range(blocks)]
        )
        self.head = nn.Linear(width, out)
        self.depth_order = [self.inp.weight]
        for b, n in zip(self.blocks, self.norms, strict=True):
            if norm:
                self.depth_order.append(n.weight)
            self.depth_order.append(b.weight)
        self.depth_order.append(self.head.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.inp(x))
        for b, n in zip(self.blocks, self.norms, strict=True):
            h = h + F.relu(b(n(h)))
        return self.head(h)


class RNNNet(nn.Module):
    def __init__(self, kind: str, hidden: int, out: int):
        super().__init__()
        cell = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[kind]
        self.rnn = cell(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, out)
        self.depth_order = [self.rnn.weight_ih_l0, self.rnn.weight_hh_l0, self.head.weight]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x.unsqueeze(-1))
        return self.head(out[:, -1])


class Transformer(nn.Module):
    def __init__(self, d_in: int, width: int, layers: int, out: int, pre_ln: bool):
        super().__init__()
        self.embed = nn.Linear(1, width)
        layer = nn.TransformerEncoderLayer(
            width, 2, 2 * width, dropout=0.0, batch_first=True, norm_first=pre_ln
        )
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(width, out)
        self.depth_order = [self.embed.weight]
        for lay in self.enc.layers:
            self.depth_order += [
                lay.self_attn.in_proj_weight,
                lay.linear1.weight,
                lay.linear2.weight,
            ]
        self.depth_order.append(self.head.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.enc(self.embed(x.unsqueeze(-1))).mean(dim=1))


# -- data -------------------------------------------------------------------------------------
def data(task: str, n: int, d: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    w = torch.randn(d, generator=g)
    score = x @ w / math.sqrt(d)
    if task == "binary":
        return x, (score > 0).long(), 2
    if task == "multi":
        edges = torch.quantile(score, torch.tensor([0.33, 0.66]))
        return x, torch.bucketize(score, edges), 3
    if task == "imbalanced":
        return x, (score > torch.quantile(score, 0.8)).long(), 2
    if task == "shuffled":
        return x, torch.randint(0, 2, (n,), generator=g), 2
    if task == "regression":
        return x, score.unsqueeze(1) + 0.1 * torch.randn(n, 1, generator=g), 1
    raise ValueError(task)


@dataclass
class Case:
    name: str
    family: str
    make: Callable[[int, int], nn.Module]  # (d_in, n_out) -> model
    task: str = "binary"
    opt: str = "adam"
    lr: float = 1e-3
    epochs: int = 6
    init: Callable[[nn.Module], None] | None = None
    d: int = 16
    expect: str = ""  # what the case was built to show (a note; truth is measured)
    lr_growth: float = 1.0  # the learning rate is multiplied by this after every step
    warmup: int = 0  # a linear warm-up over this many steps, from lr / warmup to lr
    momentum: float = 0.0  # SGD's
    # Decoupled weight decay, applied after each step: w *= 1 - lr * weight_decay (negative:
    # weights that grow every step, as with a sign error in a regulariser)
    weight_decay: float = 0.0


@dataclass
class Truth:
    kinds: set[str] = field(default_factory=set)
    nan_step: int | None = None


def _big_init(scale: float) -> Callable[[nn.Module], None]:
    def init(model: nn.Module) -> None:
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim >= 2:
                    p.mul_(scale)

    return init


def _big_recurrent(scale: float) -> Callable[[nn.Module], None]:
    """The recurrent weights times `scale` (a spectral radius above 1: gradients through time
    that grow)."""

    def init(model: nn.Module) -> None:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "weight_hh" in name:
                    p.mul_(scale)

    return init


def _dead_bias(model: nn.Module) -> None:
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Linear) and m is not getattr(model, "head", None):
                m.bias.fill_(-6.0)


def cases() -> list[Case]:
    C = Case
    return [
        # healthy controls, one per family and task
        C("mlp-relu-binary", "mlp", lambda d, o: MLP(d, 32, 3, o, "relu", False)),
        C("mlp-gelu-multi", "mlp", lambda d, o: MLP(d, 32, 3, o, "gelu", False), "multi"),
        C("mlp-tanh-regression", "mlp", lambda d, o: MLP(d, 32, 2, o, "tanh", False), "regression"),
        C(
            "mlp-relu-imbalanced",
            "mlp",
            lambda d, o: MLP(d, 32, 2, o, "relu", True),
            "imbalanced",
            epochs=10,
        ),
        C("mlp-functional-binary", "mlp", lambda d, o: FunctionalMLP(d, 32, 3, o)),
        C("cnn-relu-multi", "cnn", lambda d, o: CNN(3, o, "relu"), "multi", d=64),
        C("cnn-bn-binary", "cnn", lambda d, o: CNN(4, o, "relu", bn=True), d=64),
        C("resnet-ln-binary", "resnet", lambda d, o: ResNet(d, 32, 6, o, True)),
        C("resnet-plain-multi", "resnet", lambda d, o: ResNet(d, 32, 4, o, False), "multi"),
        C("lstm-binary", "rnn", lambda d, o: RNNNet("lstm", 16, o), epochs=8, lr=3e-3),
        C("rnn-short-binary", "rnn", lambda d, o: RNNNet("rnn", 16, o), d=8, epochs=8, lr=3e-3),
        C("transformer-preln", "transformer", lambda d, o: Transformer(d, 16, 2, o, True), d=8),
        C("transformer-postln", "transformer", lambda d, o: Transformer(d, 16, 2, o, False), d=8),
        # vanishing
        C(
            "mlp-sigmoid-deep",
            "mlp",
            lambda d, o: MLP(d, 32, 12, o, "sigmoid", False),
            expect="vanishing",
        ),
        C(
            "mlp-sigmoid-deep-headfirst",
            "mlp",
            lambda d, o: MLP(d, 32, 12, o, "sigmoid", True),
            expect="vanishing",
        ),
        C(
            "mlp-tanh-deep-sgd",
            "mlp",
            lambda d, o: MLP(d, 32, 14, o, "tanh", False),
            opt="sgd",
            lr=0.01,
            init=_big_init(0.4),
            expect="vanishing",
        ),
        C("cnn-sigmoid-deep", "cnn", lambda d, o: CNN(10, o, "sigmoid"), d=64, expect="vanishing"),
        C(
            "mlp-sigmoid-deep-multi",
            "mlp",
            lambda d, o: MLP(d, 32, 12, o, "sigmoid", False),
            "multi",
            expect="vanishing",
        ),
        # saturated
        C(
            "mlp-sigmoid-saturated",
            "mlp",
            lambda d, o: MLP(d, 32, 3, o, "sigmoid", False),
            init=_big_init(8.0),
            opt="sgd",
            lr=0.01,
            expect="saturated",
        ),
        C(
            "mlp-tanh-saturated",
            "mlp",
            lambda d, o: MLP(d, 32, 3, o, "tanh", False),
            init=_big_init(8.0),
            opt="sgd",
            lr=0.01,
            expect="saturated",
        ),
        # dead
        C(
            "mlp-relu-dead",
            "mlp",
            lambda d, o: MLP(d, 32, 3, o, "relu", False),
            init=_dead_bias,
            opt="sgd",
            lr=0.01,
            expect="dead",
        ),
        C(
            "mlp-functional-dead",
            "mlp",
            lambda d, o: FunctionalMLP(d, 32, 3, o),
            init=_dead_bias,
            opt="sgd",
            lr=0.01,
            expect="dead",
        ),
        C(
            "cnn-relu-spike-dead",
            "cnn",
            lambda d, o: CNN(3, o, "relu"),
            d=64,
            opt="sgd",
            lr=3.0,
            expect="exploding/dead",
        ),
        # exploding / diverged
        C(
            "mlp-relu-sgd-huge-lr",
            "mlp",
            lambda d, o: MLP(d, 32, 4, o, "relu", False),
            opt="sgd",
            lr=5.0,
            expect="diverged",
        ),
        C(
            "resnet-plain-sgd-lr",
            "resnet",
            lambda d, o: ResNet(d, 32, 12, o, False),
            opt="sgd",
            lr=0.5,
            expect="diverged",
        ),
        C(
            "mlp-regression-sgd-lr",
            "mlp",
            lambda d, o: MLP(d, 32, 3, o, "relu", False),
            "regression",
            opt="sgd",
            lr=0.3,
            expect="diverged",
        ),
        C(
            "lstm-sgd-huge-lr",
            "rnn",
            lambda d, o: RNNNet("lstm", 16, o),
            opt="sgd",
            lr=50.0,
            expect="exploding",
        ),
        C(
            "transformer-sgd-lr",
            "transformer",
            lambda d, o: Transformer(d, 16, 2, o, False),
            d=8,
            opt="sgd",
            lr=5.0,
            expect="diverged",
        ),
        C(
            "mlp-bigint-sgd",
            "mlp",
            lambda d, o: MLP(d, 32, 6, o, "relu", False),
            init=_big_init(3.0),
            opt="sgd",
            lr=0.05,
            expect="exploding",
        ),
        # slow divergence: a learning rate that keeps growing (a warm-up gone wrong)
        C(
            "mlp-relu-lr-ramp",
            "mlp",
            lambda d, o: MLP(d, 32, 4, o, "relu", False),
            opt="sgd",
            lr=0.01,
            lr_growth=1.06,
            epochs=12,
            expect="diverged",
        ),
        C(
            "resnet-ln-lr-ramp",
            "resnet",
            lambda d, o: ResNet(d, 32, 4, o, True),
            opt="sgd",
            lr=0.01,
            lr_growth=1.06,
            epochs=12,
            expect="diverged",
        ),
        C(
            "mlp-regression-lr-ramp",
            "mlp",
            lambda d, o: MLP(d, 32, 3, o, "tanh", False),
            "regression",
            opt="sgd",
            lr=0.01,
            lr_growth=1.05,
            epochs=12,
            expect="diverged",
        ),
        # Diverging as real runs do, after tens of steps: a warm-up that climbs past the stable
        # learning rate, momentum at a too-high rate, a deep net without normalisation (which
        # learns late instead), a recurrent net, a Transformer without warm-up, and weights
        # that grow without bound.
        C(
            "cnn-tanh-warmup-too-high",
            "cnn",
            lambda d, o: CNN(3, o, "tanh"),
            "regression",
            d=64,
            opt="sgd",
            lr=0.3,
            momentum=0.9,
            warmup=64,
            epochs=8,
            expect="diverged",
        ),
        C(
            "transformer-warmup-too-high",
            "transformer",
            lambda d, o: Transformer(d, 16, 2, o, True),
            d=8,
            opt="sgd",
            lr=3.0,
            momentum=0.9,
            warmup=128,
            epochs=8,
            expect="diverged",
        ),
        C(
            "mlp-deep-plain-momentum",
            "mlp",
            lambda d, o: MLP(d, 32, 10, o, "relu", False),
            "regression",
            opt="sgd",
            lr=0.02,
            momentum=0.9,
            init=_big_init(1.5),
            epochs=8,
            expect="healthy (written to diverge, it learns late instead: norms grow 166x as the "
            "loss halves and its dead units revive)",
        ),
        C(
            "rnn-recurrent-lr-ramp",
            "rnn",
            lambda d, o: RNNNet("rnn", 16, o),
            "regression",
            d=20,
            opt="sgd",
            lr=0.01,
            lr_growth=1.05,
            init=_big_recurrent(2.0),
            epochs=12,
            expect="diverged",
        ),
        C(
            "lstm-momentum-lr-ramp",
            "rnn",
            lambda d, o: RNNNet("lstm", 16, o),
            "regression",
            d=20,
            opt="sgd",
            lr=0.01,
            momentum=0.9,
            lr_growth=1.04,
            epochs=12,
            expect="diverged",
        ),
        C(
            "transformer-postln-no-warmup",
            "transformer",
            lambda d, o: Transformer(d, 16, 2, o, False),
            "regression",
            d=8,
            opt="sgd",
            lr=0.12,
            momentum=0.9,
            epochs=10,
            expect="diverged",
        ),
        C(
            "mlp-growing-weights",
            "mlp",
            lambda d, o: MLP(d, 32, 3, o, "relu", False),
            "regression",
            opt="sgd",
            lr=0.05,
            weight_decay=-1.0,
            epochs=12,
            expect="diverged",
        ),
        # healthy controls with the transients of early training: a warm-up, momentum, a deep
        # net waking up under Adam, a loss that drops by orders of magnitude
        C(
            "transformer-adam-warmup",
            "transformer",
            lambda d, o: Transformer(d, 16, 2, o, True),
            d=8,
            lr=3e-3,
            warmup=32,
        ),
        C(
            "cnn-sgd-momentum-warmup",
            "cnn",
            lambda d, o: CNN(3, o, "relu"),
            "multi",
            d=64,
            opt="sgd",
            lr=0.05,
            momentum=0.9,
            warmup=32,
        ),
        C(
            "mlp-relu-deep-adam",
            "mlp",
            lambda d, o: MLP(d, 32, 8, o, "relu", False),
            epochs=8,
            expect="healthy (its gradients grow 100x from a vanished start as it learns)",
        ),
        C(
            "mlp-regression-loss-drop",
            "mlp",
            lambda d, o: MLP(d, 32, 3, o, "relu", False),
            "regression",
            opt="sgd",
            lr=0.01,
            momentum=0.9,
            init=_big_init(2.0),
        ),
        C("gru-adam-binary", "rnn", lambda d, o: RNNNet("gru", 16, o), d=12, lr=3e-3, epochs=8),
        # not learning / collapsed
        C(
            "mlp-shuffled-labels",
            "mlp",
            lambda d, o: MLP(d, 32, 2, o, "relu", False),
            "shuffled",
            epochs=3,
            expect="not_learning",
        ),
        C(
            "mlp-lr-zero",
            "mlp",
            lambda d, o: MLP(d, 32, 3, o, "relu", False),
            "multi",
            opt="sgd",
            lr=1e-7,
            expect="not_learning",
        ),
        C(
            "mlp-imbalanced-majority",
            "mlp",
            lambda d, o: MLP(d, 32, 3, o, "relu", False),
            "imbalanced",
            opt="sgd",
            lr=1e-7,
            init=_big_init(0.01),
            expect="collapsed",
        ),
        C(
            "transformer-lr-zero",
            "transformer",
            lambda d, o: Transformer(d, 16, 2, o, True),
            "multi",
            d=8,
            opt="sgd",
            lr=1e-7,
            expect="not_learning",
        ),
        C(
            "rnn-long-vanishing",
            "rnn",
            lambda d, o: RNNNet("rnn", 16, o),
            d=60,
            epochs=4,
            expect="not_learning",
        ),
    ]


# -- ground truth (plain PyTorch) ---------------------------------------------------------------
BROKEN_AT_END = {"dead", "collapsed", "not_learning"}  # what updates that wreck a net leave


def unstable(losses: list[float], last_epoch_steps: int, ended: set[str]) -> bool:
    """Whether training went wrong rather than learnt: a non-finite loss, a last epoch's mean
    loss no lower than the median of the first 8 steps' losses, or a net that ended broken
    (`ended`: the other kinds measured)."""
    if not all(map(math.isfinite, losses)) or ended & BROKEN_AT_END:
        return True
    if len(losses) < 8:
        return False
    return statistics.fmean(losses[-last_epoch_steps:]) >= statistics.median(losses[:8])


def first_over_last_in_time(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn: Callable
) -> float:
    """The norm of d(loss)/d(x at the first time step) over the one at the last (x: batch by
    time, as RNNNet takes it), in eval mode."""
    x = x.detach().clone().requires_grad_(True)
    model.eval()
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(loss_fn(model(x), y), x)
    model.train()
    per_step = grad.norm(dim=0)
    return float(per_step[0] / per_step[-1])


def measure_truth(
    model: nn.Module,
    norms: list[list[float]],
    losses: list[float],
    first_epoch_steps: int,
    nan_step: int | None,
    x: torch.Tensor,
    y: torch.Tensor,
    task: str,
    time_loss: Callable | None = None,
) -> Truth:
    """`time_loss`: the loss to measure through time with (recurrent models only)."""
    truth = _truth_but_exploding(model, norms, first_epoch_steps, nan_step, x, y, task)
    measured_in_time = time_loss is not None and nan_step is None
    if measured_in_time and first_over_last_in_time(model, x, y, time_loss) <= 1e-3:
        truth.kinds.add("vanishing")
    grew = False
    for series in zip(*norms, strict=True) if norms else []:
        early = statistics.median(series[:8]) if len(series) >= 8 else None
        finite = [v for v in series if math.isfinite(v)]
        grew = grew or bool(early and finite and max(finite) >= 100 * early)
    if grew and unstable(losses, first_epoch_steps, truth.kinds):
        truth.kinds.add("exploding")
    return truth


def _truth_but_exploding(
    model: nn.Module,
    norms: list[list[float]],
    first_epoch_steps: int,
    nan_step: int | None,
    x: torch.Tensor,
    y: torch.Tensor,
    task: str,
) -> Truth:
    truth = Truth(nan_step=nan_step)
    if nan_step is not None:
        truth.kinds.add("diverged")
    by_layer = list(zip(*norms, strict=True)) if norms else []
    if by_layer and first_epoch_steps:
        first = statistics.fmean(by_layer[0][:first_epoch_steps])
        last = statistics.fmean(by_layer[-1][:first_epoch_steps])
        if math.isfinite(first) and math.isfinite(last) and last > 0 and first <= last * 1e-3:
            truth.kinds.add("vanishing")
    if nan_step is not None:
        return truth  # a diverged net's units and outputs are NaN: nothing more to judge
    outs: dict[int, torch.Tensor] = {}
    kinds: dict[int, str] = {}
    hooks = []
    act_types = {nn.ReLU: "relu", nn.GELU: "relu", nn.Sigmoid: "sigmoid", nn.Tanh: "tanh"}
    for i, m in enumerate(model.modules()):
        if type(m) in act_types:
            kinds[i] = act_types[type(m)]
            hooks.append(
                m.register_forward_hook(lambda _m, _i, o, i=i: outs.setdefault(i, o.detach()))
            )
    if isinstance(model, FunctionalMLP):
        for i, m in enumerate(model.layers):
            kinds[1000 + i] = "relu"
            hooks.append(
                m.register_forward_hook(
                    lambda _m, _i, o, i=i: outs.setdefault(1000 + i, F.relu(o.detach()))
                )
            )
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train()
    for h in hooks:
        h.remove()
    for i, a in outs.items():
        a = a.reshape(a.shape[0], -1)
        if kinds[i] == "relu" and float((a.amax(dim=0) <= 0).float().mean()) > 0.5:
            truth.kinds.add("dead")
        if kinds[i] == "sigmoid" and float(((a < 0.01) | (a > 0.99)).float().mean()) > 0.5:
            truth.kinds.add("saturated")
        if kinds[i] == "tanh" and float((a.abs() > 0.98).float().mean()) > 0.5:
            truth.kinds.add("saturated")
    if task == "regression":
        r2 = 1 - float(((out - y) ** 2).mean()) / float(((y - y.mean()) ** 2).mean())
        if r2 <= 0.05:
            truth.kinds.add("not_learning")
        return truth
    pred = out.argmax(dim=1)
    top = float(torch.bincount(pred).max()) / len(pred)
    acc = float((pred == y).float().mean())
    chance = float(torch.bincount(y).max()) / len(y)
    if top >= 0.99:
        truth.kinds.add("collapsed")
    if acc <= chance + 0.05:
        truth.kinds.add("not_learning")
    return truth


# -- one run --------------------------------------------------------------------------------------
@dataclass
class Result:
    case: Case
    truth: Truth
    found: set[str]
    warnings: list[dict]
    seconds: float


def run_case(case: Case, db: str, seed: int = 0) -> Result:
    import gradscope
    from gradscope.cli.run_view import run_diagnosis
    from gradscope.db.engine import make_engine
    from gradscope.db.queries import run_document

    torch.manual_seed(seed)
    x, y, classes = data(case.task, 768, case.d, seed)
    out = 1 if case.task == "regression" else classes
    model = case.make(case.d, out)
    if case.init is not None:
        case.init(model)
    opt = (
        torch.optim.Adam(model.parameters(), lr=case.lr)
        if case.opt == "adam"
        else torch.optim.SGD(model.parameters(), lr=case.lr, momentum=case.momentum)
    )
    xtr, ytr, xpr, ypr = x[:512], y[:512], x[512:], y[512:]
    loss_fn = F.mse_loss if case.task == "regression" else F.cross_entropy
    started = time.perf_counter()
    run = gradscope.init(db=db, name=case.name)
    # A recurrent model over its input sequence is also measured through time (its weights'
    # gradients cannot show a gradient that vanishes across time steps).
    recurrent = case.family == "rnn"
    through_time = {"time_dim": 1, "loss_fn": loss_fn} if recurrent else {}
    run.watch(model, opt, probe=(xpr, ypr), **through_time)
    norms: list[list[float]] = []
    losses: list[float] = []
    nan_step = None
    step = 0
    steps_per_epoch = 512 // 32
    for _ in range(case.epochs):
        for i in range(0, 512, 32):
            step += 1
            for group in opt.param_groups:
                if case.warmup:
                    group["lr"] = case.lr * min(1.0, step / case.warmup)
                else:
                    group["lr"] = case.lr * case.lr_growth ** (step - 1)
            loss = loss_fn(model(xtr[i : i + 32]), ytr[i : i + 32])
            opt.zero_grad()
            loss.backward()
            row = [float(p.grad.norm()) if p.grad is not None else 0.0 for p in model.depth_order]
            norms.append(row)
            losses.append(float(loss.detach()))
            if nan_step is None and not (
                math.isfinite(float(loss.detach())) and all(map(math.isfinite, row))
            ):
                nan_step = step
            opt.step()
            if case.weight_decay:
                with torch.no_grad():
                    for p in model.parameters():
                        p.mul_(1 - opt.param_groups[0]["lr"] * case.weight_decay)
        run.log_epoch(train_loss=loss)
    run.finish()
    seconds = time.perf_counter() - started
    truth = measure_truth(
        model,
        norms,
        losses,
        steps_per_epoch,
        nan_step,
        xpr,
        ypr,
        case.task,
        loss_fn if recurrent else None,
    )
    engine = make_engine(db)
    doc = run_document(engine, run.id)
    engine.dispose()
    found = {f.kind for f in run_diagnosis(doc)} - {"healthy", "empty", "failed"}
    return Result(case, truth, found, doc.get("warnings") or [], seconds)


def report(results: list[Result]) -> str:
    lines = ["| kind | TP | FN | FP | precision | recall |", "|---|---|---|---|---|---|"]
    for kind in KINDS:
        tp = sum(kind in r.truth.kinds and kind in r.found for r in results)
        fn = sum(kind in r.truth.kinds and kind not in r.found for r in results)
        fp = sum(kind not in r.truth.kinds and kind in r.found for r in results)
        prec = f"{tp / (tp + fp):.2f}" if tp + fp else "-"
        rec = f"{tp / (tp + fn):.2f}" if tp + fn else "-"
        lines.append(f"| {kind} | {tp} | {fn} | {fp} | {prec} | {rec} |")
    healthy = [r for r in results if not r.truth.kinds]
    broken = [r for r in results if r.truth.kinds]
    alarms = sum(bool(r.found) for r in healthy)
    missed = sum(not r.found for r in broken)
    lines.append("")
    lines.append(f"runs {len(results)}: {len(healthy)} healthy controls, {len(broken)} broken")
    lines.append(f"alarms on healthy controls: {alarms}; broken runs called healthy: {missed}")
    lines += ["", *warning_report(results)]
    return "\n".join(lines)


def warning_report(results: list[Result], block: int = 16) -> list[str]:
    """Per diverging run: its first NaN, its first spike or growth warning, the lead in steps
    and the lead counted from the end of the warning's block of `block` steps (when the loop
    can read it); then the false warnings on healthy runs (truth: no kind at all)."""
    lines = ["| run | NaN at step | first warning | lead | seen |", "|---|---|---|---|---|"]
    met = diverged = 0
    for r in results:
        if r.truth.nan_step is None:
            continue
        diverged += 1
        # A spike or growth warning (not "nonfinite", which is the NaN itself).
        early = [w for w in r.warnings if w["kind"] in TREND_WARNINGS]
        early = [w for w in early if w["step"] < r.truth.nan_step]
        if not early:
            lines.append(f"| {r.case.name} | {r.truth.nan_step} | none | - | - |")
            continue
        first = min(w["step"] for w in early)
        kinds = "/".join(sorted({w["kind"] for w in early if w["step"] == first}))
        lead = r.truth.nan_step - first
        seen = r.truth.nan_step - (-(-first // block) * block)
        met += lead >= 10
        shown = str(seen) if seen > 0 else "none"
        lines.append(
            f"| {r.case.name} | {r.truth.nan_step} | {kinds}, step {first} | {lead} | {shown} |"
        )
    healthy = [r for r in results if not r.truth.kinds]
    false = [{w["step"] for w in r.warnings if w["kind"] != NONFINITE} for r in healthy]
    steps = sum(r.case.epochs * 16 for r in healthy)
    lines += [
        "",
        f"diverged runs warned >= 10 steps before the NaN: {met}/{diverged}",
        f"healthy runs with a warning: {sum(bool(f) for f in false)}/{len(healthy)}; "
        f"steps warned on healthy runs: {sum(len(f) for f in false)}/{steps}",
    ]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None)
    parser.add_argument("--only", default=None, help="run the cases whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(1)
    db = args.db or str(Path(tempfile.mkdtemp()) / "zoo.db")
    results = []
    for case in cases():
        if args.only and args.only not in case.name:
            continue
        r = run_case(case, db)
        results.append(r)
        print(
            f"{case.name:30s} truth={sorted(r.truth.kinds) or ['healthy']} "
            f"found={sorted(r.found) or ['healthy']} warnings={len(r.warnings)} "
            f"nan_step={r.truth.nan_step} {r.seconds:.1f}s",
            file=sys.stderr,
        )
    print(report(results))


if __name__ == "__main__":
    main()
