"""The vanishing-gradient demo written as anyone's own PyTorch loop, recorded with gradscope.

Three networks on the two-moons data, each a plain loop with nothing gradscope-specific but
`gradscope.init`, `run.watch` and `run.log_epoch`: sigmoid everywhere, ReLU hidden layers, and a
residual MLP. Open the dashboard (`gradscope dashboard --db own_loop.db`) and compare them: the
sigmoid net's gradient falls by orders of magnitude towards the input.

    python examples/own_loop_mlp.py [--db own_loop.db] [--epochs 20] [--depth 10]
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import make_moons
from torch import nn

import gradscope


class Block(nn.Module):
    """h + relu(Linear(h)): the gradient can skip the layer."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(width, width)
        self.act = nn.ReLU()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.act(self.linear(h))


def build(arch: str, depth: int, width: int) -> nn.Module:
    """`depth` hidden layers of `width` units, then one output logit."""
    if arch == "resnet":
        layers: list[nn.Module] = [nn.Linear(2, width), nn.ReLU()]
        layers += [Block(width) for _ in range(depth - 1)]
    else:
        act = nn.Sigmoid if arch == "sigmoid" else nn.ReLU
        layers = []
        for i in range(depth):
            layers += [nn.Linear(2 if i == 0 else width, width), act()]
    return nn.Sequential(*layers, nn.Linear(width, 1))


def moons(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = make_moons(n, noise=0.2, random_state=seed)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)


def train(arch: str, db: str, epochs: int, depth: int, width: int = 32, seed: int = 0) -> str:
    torch.manual_seed(seed)
    x, y = moons(2048, seed)
    x_train, y_train, x_test, y_test = x[:1536], y[:1536], x[1536:], y[1536:]
    model = build(arch, depth, width)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    config = {"arch": arch, "depth": depth, "width": width, "lr": 1e-3, "seed": seed}
    with gradscope.init(db=db, name=f"own loop {arch} d{depth}", config=config) as run:
        run.watch(model, optimizer, probe=x_test)
        for _epoch in range(epochs):
            model.train()
            total, correct = 0.0, 0
            for idx in torch.randperm(len(x_train)).split(64):
                optimizer.zero_grad()
                logits = model(x_train[idx]).squeeze(-1)
                loss = loss_fn(logits, y_train[idx])
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
                correct += int(((logits > 0) == (y_train[idx] > 0.5)).sum())
            model.eval()
            with torch.no_grad():
                test_logits = model(x_test).squeeze(-1)
            run.log_epoch(
                train_loss=total / len(x_train),
                train_acc=correct / len(x_train),
                test_loss=float(loss_fn(test_logits, y_test)),
                test_acc=float(((test_logits > 0) == (y_test > 0.5)).float().mean()),
            )
    return run.id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="own_loop.db")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--depth", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)  # tiny models: one thread is as fast and leaves a core free
    for arch in ("sigmoid", "relu", "resnet"):
        run_id = train(arch, args.db, args.epochs, args.depth)
        print(f"{arch}: run {run_id}")


if __name__ == "__main__":
    main()
