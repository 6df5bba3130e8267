"""Vanishing through time inside an RNN (issue 21, item 5): what weight gradients cannot show,
measured as the probe's gradient reaching each time step (`gradscope.time_gradients`,
`run.watch(..., time_dim=1)`), kept with the run and told by the diagnosis and the badge.

The ground truth is plain autograd on the input (`x.requires_grad_()`, `loss.backward()`,
`x.grad` per time step), not gradscope's code."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F
from typer.testing import CliRunner

import gradscope
from gradscope.analysis.diagnosis import time_vanishing
from gradscope.api.through_time import time_summary
from gradscope.cli import app

runner = CliRunner()


class SequenceClassifier(nn.Module):
    """A recurrent layer over the sequence, a linear head on its last hidden state."""

    def __init__(self, cell: str, hidden: int = 16) -> None:
        super().__init__()
        kind = {"rnn": nn.RNN, "lstm": nn.LSTM}[cell]
        self.rnn = kind(3, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)
        return self.head(out[:, -1])


def data(steps: int, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, steps, 3, generator=g), torch.randint(0, 2, (n,), generator=g)


def truth_log10(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """log10 |dL/dx_first| / |dL/dx_last|, by plain autograd on the input."""
    model.eval()
    xg = x.clone().requires_grad_(True)
    F.cross_entropy(model(xg), y).backward()
    model.zero_grad()
    model.train()
    per_step = xg.grad.pow(2).sum(dim=(0, 2)).sqrt()
    return math.log10(float(per_step[0]) / float(per_step[-1]))


def test_time_gradients_equal_plain_autograd() -> None:
    torch.manual_seed(0)
    model = SequenceClassifier("rnn")
    x, y = data(40)
    xg = x.clone().requires_grad_(True)
    model.eval()
    F.cross_entropy(model(xg), y).backward()
    expected = xg.grad.pow(2).sum(dim=(0, 2)).sqrt()
    model.zero_grad()
    model.train()
    found = gradscope.time_gradients(model, x, y, F.cross_entropy, time_dim=1)
    assert found.shape == (40,)
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=0.0)
    # The parameters' gradients are left as they were (none), and the mode too.
    assert all(p.grad is None for p in model.parameters()) and model.training
    # The same with time first (time_dim=0), and the sum of outputs as the loss by default.
    time_first = TimeFirst(model)
    found_tf = gradscope.time_gradients(
        time_first, x.transpose(0, 1), y, F.cross_entropy, time_dim=0
    )
    torch.testing.assert_close(found_tf, expected, rtol=1e-5, atol=0.0)
    xs = x.clone().requires_grad_(True)
    model(xs).sum().backward()
    summed = xs.grad.pow(2).sum(dim=(0, 2)).sqrt()
    torch.testing.assert_close(gradscope.time_gradients(model, x), summed, rtol=1e-5, atol=0.0)
    # A gradient that underflowed to exactly 0 at the first step reads as -inf, not as missing.
    kept = time_summary([0.0, 1e-3, 2e-2], time_dim=1, epoch=1)
    assert kept["first_zero"] and kept["log10_first_over_last"] is None
    assert time_vanishing({"time_gradients": kept}) == -math.inf
    assert time_vanishing({"time_gradients": time_summary([1e-2, 2e-2], 1, 1)}) is None


def test_token_ids_are_measured_at_the_embedding_output() -> None:
    torch.manual_seed(0)
    embed, rnn, head = nn.Embedding(10, 4), nn.RNN(4, 8, batch_first=True), nn.Linear(8, 2)

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed, self.rnn, self.head = embed, rnn, head

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.head(self.rnn(self.embed(ids))[0][:, -1])

    ids, y = torch.randint(0, 10, (6, 12)), torch.randint(0, 2, (6,))
    vectors = embed(ids).detach().requires_grad_(True)  # the truth: the same net from vectors
    F.cross_entropy(head(rnn(vectors)[0][:, -1]), y).backward()
    expected = vectors.grad.pow(2).sum(dim=(0, 2)).sqrt()
    found = gradscope.time_gradients(Tokens(), ids, y, F.cross_entropy, time_dim=1)
    torch.testing.assert_close(found, expected, rtol=1e-5, atol=0.0)


class TimeFirst(nn.Module):
    """The same model fed sequences with time first ([steps, batch, features])."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.transpose(0, 1))


def record(db: Path, cell: str, steps: int, name: str) -> tuple[str, float]:
    """A sequence classifier trained two epochs through the API, measured through time; the
    plain-autograd truth at the final weights (what the last epoch measured)."""
    torch.manual_seed(0)
    model = SequenceClassifier(cell)
    x, y = data(steps)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    with gradscope.init(db=str(db), name=name, quiet=True) as run:
        run.watch(model, optimizer, probe=(x, y), time_dim=1, loss_fn=F.cross_entropy)
        for _ in range(2):
            for i in range(0, len(x), 8):
                optimizer.zero_grad()
                F.cross_entropy(model(x[i : i + 8]), y[i : i + 8]).backward()
                optimizer.step()
            run.log_epoch(train_loss=F.cross_entropy(model(x), y).detach())
    return run.id, truth_log10(model, x, y)


def shown(db: Path, run_id: str) -> dict:
    result = runner.invoke(app, ["show", run_id[:8], "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_a_long_tanh_rnn_vanishes_through_time_and_a_short_one_does_not(tmp_path: Path) -> None:
    db = tmp_path / "rnn.db"
    long_id, long_truth = record(db, "rnn", 40, "long")
    short_id, short_truth = record(db, "rnn", 4, "short")
    # The ground truth is clearly on either side of the 10^-3 limit.
    assert long_truth < -6 and short_truth > -2, (long_truth, short_truth)

    long_doc = shown(db, long_id)
    (van,) = [f for f in long_doc["diagnosis"] if f["kind"] == "vanishing"]
    assert van["severity"] == "bad" and "time step" in van["detail"]
    assert van["evidence"]["time_ratio_log10"] == pytest.approx(long_truth, abs=0.05)
    assert van["evidence"]["time_steps"] == 40
    kept = long_doc["config"]["model"]["facts"]["time_gradients"]
    assert kept["epoch"] == 2 and kept["steps"] == 40 and len(kept["profile_log10"]) == 12
    # Kept per epoch as a free metric too (a curve in the dashboard).
    curve = long_doc["metrics"]["time_grad/log10_first_over_last"]
    assert curve["epoch"] == [1, 2] and curve["value"][-1] == pytest.approx(long_truth, abs=0.05)
    # The weights alone do not show it: the same run diagnosed without the time facts.
    without = [f for f in _diagnose_without_time(long_doc) if f.kind == "vanishing"]
    assert not without

    short_doc = shown(db, short_id)
    assert not [f for f in short_doc["diagnosis"] if f["kind"] == "vanishing"]
    facts = short_doc["config"]["model"]["facts"]["time_gradients"]
    assert facts["log10_first_over_last"] == pytest.approx(short_truth, abs=0.05)

    # The badge reads the same facts (one source).
    listed = runner.invoke(app, ["runs", "--db", str(db), "--json"])
    badges = {r["id"]: r["diagnosis"] for r in json.loads(listed.stdout)}
    assert badges[long_id] == "vanishing" and badges[short_id] != "vanishing"


def _diagnose_without_time(doc: dict) -> list:
    """`gradscope show`'s diagnosis of the same run with its time facts left out."""
    from gradscope.cli.run_view import run_diagnosis

    blind = copy.deepcopy(doc)
    del blind["config"]["model"]["facts"]["time_gradients"]
    return run_diagnosis(blind)


def test_watch_refuses_time_dim_without_a_sequence_probe(tmp_path: Path) -> None:
    model = SequenceClassifier("rnn")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with gradscope.init(db=str(tmp_path / "r.db"), quiet=True) as run:
        with pytest.raises(ValueError, match="time_dim needs a probe"):
            run.watch(model, optimizer, time_dim=1)
        with pytest.raises(ValueError, match="time_dim must be an integer"):
            run.watch(model, optimizer, probe=data(5)[0], time_dim="1")
