"""What does measuring the gradient through time cost? Prints ratios.

A tanh RNN classifier (3 inputs, hidden 64, a linear head on the last state) over sequences of
80 steps, 2048 sequences, batch 64 (32 steps an epoch), SGD, one thread; the probe is 256
sequences. Each round trains one epoch watched without and one watched with
`time_dim=1, loss_fn=cross_entropy` (order alternating, same process, same database), and
times the epoch including its log_epoch and the wait for its write; the ratio is the median
over paired rounds, with its spread. The measurement itself is one forward and one backward
pass of the probe batch per epoch.

    python benchmarks/time_gradients_cost.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[0] = str(ROOT)

import torch  # noqa: E402
from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

import gradscope  # noqa: E402


class Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(3, 64, batch_first=True)
        self.head = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0][:, -1])


def epoch_seconds(db: str, time_dim: int | None, x: torch.Tensor, y: torch.Tensor) -> float:
    torch.manual_seed(0)
    model = Classifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    probe = (x[:256], y[:256])
    extra = {"time_dim": time_dim, "loss_fn": F.cross_entropy} if time_dim is not None else {}
    with gradscope.init(db=db, quiet=True) as run:
        run.watch(model, optimizer, probe=probe, **extra)
        start = time.perf_counter()
        for i in range(0, len(x), 64):
            optimizer.zero_grad()
            F.cross_entropy(model(x[i : i + 64]), y[i : i + 64]).backward()
            optimizer.step()
        run.log_epoch(train_loss=0.0)
        run.diverged  # waits for the epoch's measurement and write  # noqa: B018
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(2048, 80, 3, generator=g), torch.randint(0, 2, (2048,), generator=g)
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "bench.db")
        epoch_seconds(db, None, x, y)  # warm-up: imports, the database
        ratios, plain = [], []
        for r in range(args.rounds):
            order = (None, 1) if r % 2 == 0 else (1, None)
            found = {t: epoch_seconds(db, t, x, y) for t in order}
            ratios.append(found[1] / found[None])
            plain.append(found[None])
    print(f"epoch without: median {statistics.median(plain) * 1000:.0f} ms")
    print(
        f"with time_dim / without: median {statistics.median(ratios):.3f}x "
        f"(min {min(ratios):.3f}, max {max(ratios):.3f}, {args.rounds} paired rounds)"
    )


if __name__ == "__main__":
    main()
