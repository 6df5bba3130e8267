"""Runs of other tasks than gradscope's binary classifiers, recorded through the API for the
dashboard tests: a user's 4-class CNN and a regression MLP, each logging free metrics per step
and per epoch."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

import gradscope


def record_multiclass(db: Path) -> str:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 4))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = torch.randn(32, 3, 8, 8), torch.randint(0, 4, (32,))
    with gradscope.init(db=str(db), name="four classes", config={"classes": 4}, quiet=True) as run:
        run.watch(model, optimizer, probe=(x[:16], y[:16]))
        for epoch in range(3):
            for i in range(0, 32, 8):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(x[i : i + 8]), y[i : i + 8])
                loss.backward()
                optimizer.step()
                run.log({"train/loss": loss, "grad_norm_preclip": math.inf if i == 8 else 1.0})
            run.log({"test/loss": loss.detach() * 1.2, "test/acc": 0.25 + 0.1 * epoch})
            run.log_epoch(train_loss=loss, lr=1e-2)
    return run.id


def record_regression(db: Path) -> str:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(5, 16), nn.Tanh(), nn.Linear(16, 1))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    x = torch.randn(64, 5)
    y = x.sum(dim=1, keepdim=True)
    with gradscope.init(db=str(db), name="regression", config={"target": "sum"}, quiet=True) as run:
        run.watch(model, optimizer)
        for _epoch in range(3):
            for i in range(0, 64, 16):
                optimizer.zero_grad()
                loss = nn.functional.mse_loss(model(x[i : i + 16]), y[i : i + 16])
                loss.backward()
                optimizer.step()
                run.log({"train/loss": loss})
            run.log({"val/loss": loss.detach() * 1.1, "r2": 0.5})
            run.log_epoch(train_loss=loss, test_loss=loss.detach() * 1.1)
    return run.id
