"""A small CNN on synthetic images, trained in a plain loop and recorded with gradscope.

The images are 12x12 noise with a bright bar: horizontal, vertical or diagonal (three classes).
Every weight is a layer (Conv2d, BatchNorm2d, Linear), named by its module path; the probe batch
gives activation health (dead fractions after each ReLU) at every epoch.

    python examples/own_loop_cnn.py [--db own_loop.db] [--epochs 8]
"""

from __future__ import annotations

import argparse

import torch
from torch import nn

import gradscope


def bars(n: int, seed: int, size: int = 12) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size, size, generator=g) * 0.5
    y = torch.randint(0, 3, (n,), generator=g)
    at = torch.randint(2, size - 2, (n,), generator=g)
    for i in range(n):
        k = int(at[i])
        if y[i] == 0:
            x[i, 0, k, :] += 2.0
        elif y[i] == 1:
            x[i, 0, :, k] += 2.0
        else:
            x[i, 0].diagonal().add_(2.0)
    return x, y


def build() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 3),
    )


def train(db: str, epochs: int, seed: int = 0) -> str:
    torch.manual_seed(seed)
    x, y = bars(768, seed)
    x_train, y_train, x_test, y_test = x[:512], y[:512], x[512:], y[512:]
    model = build()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loss_fn = nn.CrossEntropyLoss()
    config = {"model": "small cnn", "lr": 3e-3, "batch_size": 32, "seed": seed}
    with gradscope.init(db=db, name="own loop cnn", config=config) as run:
        run.watch(model, optimizer, probe=x_test[:128])
        for _epoch in range(epochs):
            model.train()
            total, correct = torch.zeros(()), torch.zeros((), dtype=torch.long)
            for idx in torch.randperm(len(x_train)).split(32):
                optimizer.zero_grad()
                logits = model(x_train[idx])
                loss = loss_fn(logits, y_train[idx])
                loss.backward()
                optimizer.step()
                # Kept as tensors: no host sync per step (log_epoch reads them off-thread).
                total += loss.detach() * len(idx)
                correct += (logits.argmax(1) == y_train[idx]).sum()
            model.eval()
            with torch.no_grad():
                test_logits = model(x_test)
            run.log_epoch(
                train_loss=total / len(x_train),
                train_acc=correct / len(x_train),
                test_loss=loss_fn(test_logits, y_test),
                test_acc=(test_logits.argmax(1) == y_test).float().mean(),
            )
    return run.id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="own_loop.db")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"cnn: run {train(args.db, args.epochs)}")


if __name__ == "__main__":
    main()
