"""A held-out diagnosis check: models unlike the zoo's (benchmarks/diagnosis_zoo.py), written
before their results were seen and not used to tune any rule, each with its ground truth
measured here in plain PyTorch (own hooks, own arithmetic: no gradscope code), recorded through
the public API (gradscope.init / run.watch) and read back as a user would, with
`gradscope show RUN --json` (kinds in "diagnosis", the moment in "epochs", "warnings").

    .venv/bin/python benchmarks/diagnosis_holdout.py [--only NAME] [--db PATH]

Models: a GRU, a 1-D CNN (with and without BatchNorm), a token Transformer classifier (pre-LN,
AdamW, warm-up), a wide shallow tanh net, a SiLU regression MLP, a LeakyReLU MLP on an
imbalanced 5-class task, a GELU residual MLP, a ReLU6 MLP, a deep tanh MLP registered head
first; seed 1, 1024 samples, batches of 64 (the zoo: seed 0, 512 samples, batches of 32).
The first 17 specs were written before any result was seen; the 5 of "batch 2" (diverging runs:
a GRU regression on an lr ramp, a tanh 1-D CNN warmed up too high, a SiLU MLP under too much
momentum, a token Transformer under SGD without warm-up, weights that grow) after, with the
warning rules already frozen. No rule was tuned on this file.

Ground truth, per run (the kinds' definitions in docs/diagnosis.md, measured independently):
- diverged: the loss or a weight's gradient became non-finite at some step;
- exploding: some weight's per-step gradient norm reached 100x the median of its first 8 steps,
  and training was unstable with it (`unstable`): the loss became non-finite, or the run ended
  no better than it began (the mean loss of its last epoch at least the median of its first 8
  steps), or the updates broke the net (it ended dead, collapsed or not learning, below).
  Norms that grow while the loss falls are a net waking up from a vanished start;
- vanishing: over the first epoch, the mean gradient norm of the weight farthest from the loss
  is at most 1e-3 times that of the weight nearest it (the order is written into each model);
- dead: after training, more than half the units of a hidden ReLU/ReLU6/GELU layer give <= 0 for
  every probe input; saturated: more than half of a hidden sigmoid layer's outputs are within
  0.01 of 0 or 1, or of a tanh layer's have |a| > 0.98;
- collapsed: one class predicted for >= 99% of the probe inputs;
- not_learning: probe accuracy <= the labels' majority rate + 0.05, or R^2 <= 0.05.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
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
N_TRAIN, N_PROBE, BATCH = 1024, 256, 64
STEPS_PER_EPOCH = N_TRAIN // BATCH


# -- models: each lists its weights from the input side to the loss in `input_to_loss` ---
class GRUNet(nn.Module):
    def __init__(self, hidden: int, out: int) -> None:
        super().__init__()
        self.gru = nn.GRU(2, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, out)
        self.input_to_loss = [self.gru.weight_ih_l0, self.gru.weight_hh_l0, self.fc.weight]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        seq, _ = self.gru(x)
        return self.fc(seq[:, -1])


class Conv1dNet(nn.Module):
    def __init__(self, depth: int, channels: int, out: int, act: str, bn: bool) -> None:
        super().__init__()
        make = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}[act]
        self.convs = nn.ModuleList()
        self.extras = nn.ModuleList()
        for i in range(depth):
            self.convs.append(nn.Conv1d(1 if i == 0 else channels, channels, 5, padding=2))
            self.extras.append(nn.Sequential(nn.BatchNorm1d(channels), make()) if bn else make())
        self.pool = nn.AdaptiveAvgPool1d(4)
        self.out = nn.Linear(channels * 4, out)
        self.input_to_loss = [c.weight for c in self.convs] + [self.out.weight]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.unsqueeze(1)
        for conv, extra in zip(self.convs, self.extras, strict=True):
            h = extra(conv(h))
        return self.out(self.pool(h).flatten(1))


class TokenTransformer(nn.Module):
    def __init__(self, vocab: int, width: int, layers: int, out: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Parameter(torch.zeros(1, 12, width))
        block = nn.TransformerEncoderLayer(
            width, 4, 4 * width, dropout=0.0, batch_first=True, norm_first=True, activation="gelu"
        )
        self.body = nn.TransformerEncoder(block, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.cls = nn.Linear(width, out)
        self.input_to_loss = [self.tok.weight]
        for lay in self.body.layers:
            self.input_to_loss += [lay.self_attn.in_proj_weight, lay.linear2.weight]
        self.input_to_loss.append(self.cls.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(self.tok(x) + self.pos)
        return self.cls(self.norm(h).mean(dim=1))


class Plain(nn.Module):
    """Linear layers each followed by `act`; `head_first` registers the head before the body."""

    def __init__(
        self, d_in: int, widths: list[int], out: int, act: type[nn.Module], head_first: bool
    ) -> None:
        super().__init__()
        mods: list[nn.Module] = []
        prev = d_in
        for w in widths:
            mods += [nn.Linear(prev, w), act()]
            prev = w
        if head_first:
            self.last = nn.Linear(prev, out)
            self.hidden = nn.Sequential(*mods)
        else:
            self.hidden = nn.Sequential(*mods)
            self.last = nn.Linear(prev, out)
        linears = [m.weight for m in self.hidden if isinstance(m, nn.Linear)]
        self.input_to_loss = [*linears, self.last.weight]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last(self.hidden(x))


class ResidualGELU(nn.Module):
    def __init__(self, d_in: int, width: int, blocks: int, out: int) -> None:
        super().__init__()
        self.stem = nn.Linear(d_in, width)
        self.mlps = nn.ModuleList(
            [nn.Sequential(nn.Linear(width, 2 * width), nn.GELU()) for _ in range(blocks)]
        )
        self.downs = nn.ModuleList([nn.Linear(2 * width, width) for _ in range(blocks)])
        self.last = nn.Linear(width, out)
        self.input_to_loss = [self.stem.weight]
        for m, d in zip(self.mlps, self.downs, strict=True):
            self.input_to_loss += [m[0].weight, d.weight]
        self.input_to_loss.append(self.last.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        for m, d in zip(self.mlps, self.downs, strict=True):
            h = h + d(m(h))
        return self.last(h)


# -- data (seeded; different generators from the zoo's) ---
def dataset(task: str, seed: int) -> tuple[torch.Tensor, torch.Tensor, int]:
    g = torch.Generator().manual_seed(seed)
    n = N_TRAIN + N_PROBE
    if task == "sequence":  # the sign of the first three steps' first channel, through 10 steps
        x = torch.randn(n, 10, 2, generator=g)
        return x, (x[:, :3, 0].sum(dim=1) > 0).long(), 2
    if task == "signal":  # 4 classes: which of 4 frequencies a noisy 32-sample signal carries
        y = torch.randint(0, 4, (n,), generator=g)
        t = torch.arange(32).float()
        phase = torch.rand(n, 1, generator=g) * 6.28
        x = torch.sin((y.float().unsqueeze(1) + 1) * 0.35 * t + phase)
        return x + 0.5 * torch.randn(n, 32, generator=g), y, 4
    if task == "tokens":  # 3 classes: which of tokens 1, 2, 3 appears most often
        x = torch.randint(0, 16, (n, 12), generator=g)
        counts = torch.stack([(x == k).sum(dim=1) for k in (1, 2, 3)], dim=1).float()
        return x, (counts + 0.01 * torch.arange(3)).argmax(dim=1), 3
    if task == "rings":  # 2-D: inside or outside a ring
        x = torch.randn(n, 2, generator=g)
        return x, (x.norm(dim=1) > 1.18).long(), 2
    if task == "sequence-reg":  # the sum of the first three steps' first channel
        x = torch.randn(n, 10, 2, generator=g)
        return x, x[:, :3, 0].sum(dim=1, keepdim=True), 1
    if task == "signal-reg":  # the signal's frequency, as a number
        x, y, _ = dataset("signal", seed)
        return x, (y.float() + 1).unsqueeze(1) * 0.35, 1
    if task == "regression":
        x = torch.randn(n, 6, generator=g)
        y = torch.sin(x[:, 0]) + x[:, 1] * x[:, 2] + 0.1 * torch.randn(n, generator=g)
        return x, y.unsqueeze(1), 1
    if task == "five":  # imbalanced 5-class blobs: priors 0.5, 0.2, 0.15, 0.1, 0.05
        y = torch.multinomial(torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05]), n, True, generator=g)
        centres = 1.5 * torch.randn(5, 10, generator=g)
        return centres[y] + torch.randn(n, 10, generator=g), y, 5
    if task == "five-shuffled":
        x, y, k = dataset("five", seed)
        return x, y[torch.randperm(n, generator=g)], k
    raise ValueError(task)


@dataclass
class Spec:
    name: str
    task: str
    make: Callable[[int], nn.Module]  # classes (1: regression) -> model
    opt: str = "adam"  # adam, adamw, sgd
    lr: float = 1e-3
    momentum: float = 0.0
    epochs: int = 6
    warmup: int = 0  # linear warm-up steps
    ramp: float = 1.0  # lr multiplied by this each step
    decay: float = 0.0  # decoupled weight decay after each step (negative: weights that grow)
    prepare: Callable[[nn.Module], None] | None = None
    intent: str = ""  # what it was written to show (a note: the truth is measured)


def _scale_matrices(factor: float) -> Callable[[nn.Module], None]:
    def prepare(model: nn.Module) -> None:
        with torch.no_grad():
            for p in model.parameters():
                if p.ndim >= 2:
                    p.mul_(factor)

    return prepare


def _negative_bias(value: float) -> Callable[[nn.Module], None]:
    def prepare(model: nn.Module) -> None:
        with torch.no_grad():
            for m in model.hidden:
                if isinstance(m, nn.Linear):
                    m.bias.fill_(value)

    return prepare


def _favour_class_zero(model: nn.Module) -> None:
    with torch.no_grad():
        model.last.weight.mul_(0.01)
        model.last.bias.copy_(torch.tensor([8.0, 0.0, 0.0, 0.0, 0.0]))


def specs() -> list[Spec]:
    S = Spec
    return [
        # written to be healthy
        S("gru-sequence", "sequence", lambda o: GRUNet(24, o), lr=3e-3, epochs=8),
        S("conv1d-bn-signal", "signal", lambda o: Conv1dNet(3, 8, o, "relu", True), lr=3e-3),
        S(
            "token-transformer-preln",
            "tokens",
            lambda o: TokenTransformer(16, 32, 2, o),
            opt="adamw",
            lr=2e-3,
            warmup=48,
            epochs=8,
        ),
        S(
            "wide-tanh-rings",
            "rings",
            lambda o: Plain(2, [256], o, nn.Tanh, False),
            opt="sgd",
            lr=0.05,
            momentum=0.9,
            epochs=8,
        ),
        S("silu-regression", "regression", lambda o: Plain(6, [64, 64, 64], o, nn.SiLU, False)),
        S(
            "leaky-five-imbalanced",
            "five",
            lambda o: Plain(10, [48, 48], o, nn.LeakyReLU, False),
            lr=3e-3,
        ),
        S("residual-gelu-five", "five", lambda o: ResidualGELU(10, 32, 4, o)),
        # written to be broken
        S(
            "conv1d-sigmoid-deep",
            "signal",
            lambda o: Conv1dNet(9, 8, o, "sigmoid", False),
            intent="vanishing",
        ),
        S(
            "tanh-deep-headfirst-small",
            "rings",
            lambda o: Plain(2, [32] * 10, o, nn.Tanh, True),
            opt="sgd",
            lr=0.02,
            prepare=_scale_matrices(0.5),
            intent="vanishing",
        ),
        S(
            "wide-tanh-saturated",
            "rings",
            lambda o: Plain(2, [256], o, nn.Tanh, False),
            opt="sgd",
            lr=0.001,
            prepare=_scale_matrices(40.0),
            intent="saturated",
        ),
        S(
            "relu6-dead",
            "five",
            lambda o: Plain(10, [64, 64], o, nn.ReLU6, False),
            opt="sgd",
            lr=0.01,
            prepare=_negative_bias(-8.0),
            intent="dead",
        ),
        S(
            "gru-lr-ramp",
            "sequence",
            lambda o: GRUNet(24, o),
            opt="sgd",
            lr=0.05,
            ramp=1.05,
            epochs=12,
            intent="diverged",
        ),
        S(
            "conv1d-warmup-too-high",
            "signal",
            lambda o: Conv1dNet(3, 8, o, "relu", False),
            opt="sgd",
            lr=2.0,
            momentum=0.9,
            warmup=80,
            epochs=10,
            intent="diverged",
        ),
        S(
            "residual-gelu-momentum",
            "regression",
            lambda o: ResidualGELU(6, 32, 6, o),
            opt="sgd",
            lr=0.05,
            momentum=0.95,
            epochs=8,
            intent="diverged",
        ),
        # Batch 2, diverging runs written after batch 1's results were seen (its one diverging
        # run was too few to measure lead times), with the warning rules already frozen.
        S(
            "gru-regression-lr-ramp",
            "sequence-reg",
            lambda o: GRUNet(24, o),
            opt="sgd",
            lr=0.01,
            ramp=1.05,
            epochs=12,
            intent="diverged",
        ),
        S(
            "conv1d-tanh-regression-warmup",
            "signal-reg",
            lambda o: Conv1dNet(3, 8, o, "tanh", False),
            opt="sgd",
            lr=0.5,
            momentum=0.9,
            warmup=96,
            epochs=10,
            intent="diverged",
        ),
        S(
            "silu-regression-momentum-too-high",
            "regression",
            lambda o: Plain(6, [64, 64, 64], o, nn.SiLU, False),
            opt="sgd",
            lr=0.05,
            momentum=0.95,
            epochs=8,
            intent="diverged",
        ),
        S(
            "token-transformer-sgd-no-warmup",
            "tokens",
            lambda o: TokenTransformer(16, 32, 2, o),
            opt="sgd",
            lr=0.5,
            momentum=0.9,
            epochs=6,
            intent="diverged",
        ),
        S(
            "silu-regression-growing-weights",
            "regression",
            lambda o: Plain(6, [64, 64], o, nn.SiLU, False),
            opt="sgd",
            lr=0.02,
            decay=-2.0,
            epochs=10,
            intent="diverged",
        ),
        S(
            "token-transformer-frozen-lr",
            "tokens",
            lambda o: TokenTransformer(16, 32, 2, o),
            opt="sgd",
            lr=1e-8,
            intent="not_learning",
        ),
        S(
            "leaky-five-shuffled",
            "five-shuffled",
            lambda o: Plain(10, [48, 48], o, nn.LeakyReLU, False),
            lr=3e-3,
            epochs=4,
            intent="not_learning",
        ),
        S(
            "five-stuck-on-majority",
            "five",
            lambda o: Plain(10, [32], o, nn.ReLU, False),
            opt="sgd",
            lr=1e-8,
            prepare=_favour_class_zero,
            intent="collapsed",
        ),
    ]


# -- ground truth in plain PyTorch ---
@dataclass
class Truth:
    kinds: set[str] = field(default_factory=set)
    nan_step: int | None = None


_HIDDEN_ACTS = {
    nn.ReLU: "relu",
    nn.ReLU6: "relu",
    nn.GELU: "relu",
    nn.Sigmoid: "sigmoid",
    nn.Tanh: "tanh",
}


BROKEN_AT_END = {"dead", "collapsed", "not_learning"}  # what updates that wreck a net leave


def unstable(losses: list[float], ended: set[str]) -> bool:
    """Whether training went wrong rather than learnt: a non-finite loss, a last epoch's mean
    loss no lower than the median of the first 8 steps' losses, or a net that ended broken
    (`ended`: the other kinds measured)."""
    if not all(math.isfinite(v) for v in losses) or ended & BROKEN_AT_END:
        return True
    if len(losses) < 8:
        return False
    return statistics.fmean(losses[-STEPS_PER_EPOCH:]) >= statistics.median(losses[:8])


def truth_of(
    model: nn.Module,
    per_step: list[list[float]],
    losses: list[float],
    nan_step: int | None,
    x: torch.Tensor,
    y: torch.Tensor,
    regression: bool,
) -> Truth:
    truth = _truth_but_exploding(model, per_step, nan_step, x, y, regression)
    grew = False
    for col in zip(*per_step, strict=True):
        if len(col) < 8:
            continue
        base = statistics.median(col[:8])
        top = max((v for v in col if math.isfinite(v)), default=0.0)
        grew = grew or (base > 0 and top >= 100 * base)
    if grew and unstable(losses, truth.kinds):
        truth.kinds.add("exploding")
    return truth


def _truth_but_exploding(
    model: nn.Module,
    per_step: list[list[float]],
    nan_step: int | None,
    x: torch.Tensor,
    y: torch.Tensor,
    regression: bool,
) -> Truth:
    truth = Truth(nan_step=nan_step)
    if nan_step is not None:
        truth.kinds.add("diverged")
    columns = [list(c) for c in zip(*per_step, strict=True)]
    first_epoch = [c[:STEPS_PER_EPOCH] for c in (columns[0], columns[-1])] if columns else []
    if first_epoch:
        far, near = (statistics.fmean(c) for c in first_epoch)
        if math.isfinite(far) and math.isfinite(near) and near > 0 and far <= 1e-3 * near:
            truth.kinds.add("vanishing")
    if nan_step is not None:
        return truth  # NaN weights: units and outputs say nothing more
    seen: list[tuple[str, torch.Tensor]] = []
    handles = [
        m.register_forward_hook(
            lambda _m, _i, o, kind=_HIDDEN_ACTS[type(m)]: seen.append((kind, o.detach()))
        )
        for m in model.modules()
        if type(m) in _HIDDEN_ACTS
    ]
    model.eval()
    with torch.no_grad():
        out = model(x)
    model.train()
    for h in handles:
        h.remove()
    for kind, a in seen:
        a = a.reshape(a.shape[0], -1)
        if kind == "relu" and (a.max(dim=0).values <= 0).float().mean().item() > 0.5:
            truth.kinds.add("dead")
        if kind == "sigmoid" and ((a - 0.5).abs() > 0.49).float().mean().item() > 0.5:
            truth.kinds.add("saturated")
        if kind == "tanh" and (a.abs() > 0.98).float().mean().item() > 0.5:
            truth.kinds.add("saturated")
    if regression:
        residual = ((out - y) ** 2).mean().item()
        total = ((y - y.mean()) ** 2).mean().item()
        if 1 - residual / total <= 0.05:
            truth.kinds.add("not_learning")
        return truth
    guess = out.argmax(dim=1)
    share = torch.bincount(guess, minlength=out.shape[1]).max().item() / len(guess)
    majority = torch.bincount(y).max().item() / len(y)
    if share >= 0.99:
        truth.kinds.add("collapsed")
    if (guess == y).float().mean().item() <= majority + 0.05:
        truth.kinds.add("not_learning")
    return truth


# -- one run ---
@dataclass
class Outcome:
    spec: Spec
    truth: Truth
    found: set[str]
    warnings: list[dict]
    moment: int | None  # the first first_nonfinite_step in "epochs", when recorded
    seconds: float


def show_json(db: str, run_id: str) -> dict:
    """`gradscope show RUN --db DB --json`, as a user would call it."""
    env = {**os.environ, "GRADSCOPE_QUIET": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "gradscope.cli", "show", run_id, "--db", db, "--json"],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return json.loads(done.stdout)


def run_spec(
    spec: Spec, db: str, seed: int = 1, read: Callable[[str, str], dict] = show_json
) -> Outcome:
    import gradscope

    torch.manual_seed(seed)
    x, y, classes = dataset(spec.task, seed)
    regression = classes == 1
    model = spec.make(1 if regression else classes)
    if spec.prepare is not None:
        spec.prepare(model)
    if spec.opt == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=spec.momentum)
    elif spec.opt == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=spec.lr)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=spec.lr)
    xt, yt, xp, yp = x[:N_TRAIN], y[:N_TRAIN], x[N_TRAIN:], y[N_TRAIN:]
    loss_of = F.mse_loss if regression else F.cross_entropy
    started = time.perf_counter()
    run = gradscope.init(db=db, name=spec.name, quiet=True)
    run.watch(model, opt, probe=(xp, yp))
    per_step: list[list[float]] = []
    losses: list[float] = []
    nan_step = None
    step = 0
    for _ in range(spec.epochs):
        order = torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(seed + step))
        for i in range(0, N_TRAIN, BATCH):
            step += 1
            lr = spec.lr * (min(1.0, step / spec.warmup) if spec.warmup else 1.0)
            for group in opt.param_groups:
                group["lr"] = lr * spec.ramp ** (step - 1)
            idx = order[i : i + BATCH]
            loss = loss_of(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            norms = [
                torch.linalg.vector_norm(w.grad).item() if w.grad is not None else 0.0
                for w in model.input_to_loss
            ]
            per_step.append(norms)
            losses.append(loss.item())
            finite = math.isfinite(loss.item()) and all(math.isfinite(v) for v in norms)
            if nan_step is None and not finite:
                nan_step = step
            opt.step()
            if spec.decay:
                with torch.no_grad():
                    for p in model.parameters():
                        p.mul_(1 - opt.param_groups[0]["lr"] * spec.decay)
        run.log_epoch(train_loss=loss.detach())
    run.finish()
    seconds = time.perf_counter() - started
    truth = truth_of(model, per_step, losses, nan_step, xp, yp, regression)
    doc = read(db, run.id)
    found = {f["kind"] for f in doc["diagnosis"]} - {"healthy", "empty", "failed"}
    moments = [e["first_nonfinite_step"] for e in doc["epochs"] if e.get("first_nonfinite_step")]
    return Outcome(
        spec, truth, found, doc.get("warnings") or [], moments[0] if moments else None, seconds
    )


def report(outcomes: list[Outcome]) -> str:
    lines = ["| kind | TP | FN | FP |", "|---|---|---|---|"]
    for kind in KINDS:
        tp = sum(kind in o.truth.kinds and kind in o.found for o in outcomes)
        fn = sum(kind in o.truth.kinds and kind not in o.found for o in outcomes)
        fp = sum(kind not in o.truth.kinds and kind in o.found for o in outcomes)
        lines.append(f"| {kind} | {tp} | {fn} | {fp} |")
    healthy = [o for o in outcomes if not o.truth.kinds]
    broken = [o for o in outcomes if o.truth.kinds]
    diverged = [o for o in outcomes if o.truth.nan_step is not None]
    lines += [
        "",
        f"runs {len(outcomes)}: {len(healthy)} healthy, {len(broken)} broken; alarms on healthy: "
        f"{sum(bool(o.found) for o in healthy)}; broken called healthy: "
        f"{sum(not o.found for o in broken)}; diverged runs with their moment recorded: "
        f"{sum(o.moment is not None for o in diverged)}/{len(diverged)}",
        "",
        "| run | NaN at step | first warning | lead |",
        "|---|---|---|---|",
    ]
    for o in diverged:
        early = [
            w for w in o.warnings if w["kind"] in TREND_WARNINGS and w["step"] < o.truth.nan_step
        ]
        if early:
            first = min(early, key=lambda w: w["step"])
            lead = o.truth.nan_step - first["step"]
            lines.append(
                f"| {o.spec.name} | {o.truth.nan_step} | {first['kind']}, step {first['step']} "
                f"| {lead} |"
            )
        else:
            lines.append(f"| {o.spec.name} | {o.truth.nan_step} | none | - |")
    false = [{w["step"] for w in o.warnings if w["kind"] != NONFINITE} for o in healthy]
    steps = sum(o.spec.epochs * STEPS_PER_EPOCH for o in healthy)
    lines.append(
        f"\nhealthy runs with a warning: {sum(bool(f) for f in false)}/{len(healthy)}; steps "
        f"warned on healthy runs: {sum(len(f) for f in false)}/{steps}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default=None)
    parser.add_argument("--only", default=None, help="run the specs whose name contains this")
    args = parser.parse_args()
    torch.set_num_threads(1)
    db = args.db or str(Path(tempfile.mkdtemp()) / "holdout.db")
    outcomes = []
    for spec in specs():
        if args.only and args.only not in spec.name:
            continue
        o = run_spec(spec, db)
        outcomes.append(o)
        print(
            f"{spec.name:30s} truth={sorted(o.truth.kinds) or ['healthy']} "
            f"found={sorted(o.found) or ['healthy']} warnings={len(o.warnings)} "
            f"nan_step={o.truth.nan_step} moment={o.moment} {o.seconds:.1f}s",
            file=sys.stderr,
        )
    print(report(outcomes))


if __name__ == "__main__":
    main()
