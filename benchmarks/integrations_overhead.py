"""What does the Lightning callback cost a fit? Issue 23's benchmark; prints ratios.

A 10-layer tanh MLP (width 64) on 2,048 random rows, batch 32 (64 optimizer steps per epoch),
SGD, 8 epochs (512 steps), one thread, CPU; Lightning's progress bar, logger, checkpoints and
model summary off (they would drown the difference). Each round fits the same model from the
same weights twice in this one warm process, without and with `GradscopeCallback` (into a real
SQLite file), in alternating order; the ratio is the median over paired rounds, with its
spread (min-max). A third fit per round without the callback gives the noise yardstick
(plain / plain).

    python benchmarks/integrations_overhead.py [--rounds 9]
"""

from __future__ import annotations

import argparse
import copy
import logging
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import pytorch_lightning as pl
import torch
from torch import nn

from gradscope.integrations.lightning import GradscopeCallback

ROWS, BATCH, EPOCHS, DEPTH, WIDTH = 2048, 32, 8, 10, 64


class Net(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(8, WIDTH), nn.Tanh()]
        for _ in range(DEPTH - 2):
            layers += [nn.Linear(WIDTH, WIDTH), nn.Tanh()]
        self.net = nn.Sequential(*layers, nn.Linear(WIDTH, 1))

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _i: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def fit(module: pl.LightningModule, loader: torch.utils.data.DataLoader, db: Path | None) -> float:
    callbacks = [GradscopeCallback(db=str(db), name="bench", quiet=True)] if db else []
    trainer = pl.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=callbacks,
    )
    start = time.perf_counter()
    trainer.fit(module, loader)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(1)
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(ROWS, 8, generator=g)
    data = torch.utils.data.TensorDataset(x, x[:, :1] * x[:, 1:2])
    loader = torch.utils.data.DataLoader(data, batch_size=BATCH)
    torch.manual_seed(0)
    base = Net()
    ratios, noise, extra = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        fit(copy.deepcopy(base), loader, Path(tmp) / "warm.db")  # warm-up: imports, first run
        for r in range(args.rounds):
            db = Path(tmp) / f"r{r}.db"
            order = (
                ["plain", "callback", "plain2"] if r % 2 == 0 else ["callback", "plain", "plain2"]
            )
            times = {
                k: fit(copy.deepcopy(base), loader, db if k == "callback" else None) for k in order
            }
            ratios.append(times["callback"] / times["plain"])
            noise.append(times["plain2"] / times["plain"])
            extra.append(times["callback"] - (times["plain"] + times["plain2"]) / 2)
            print(
                f"round {r + 1}: plain {times['plain']:.3f}s  callback {times['callback']:.3f}s  "
                f"ratio {ratios[-1]:.3f}  (plain/plain {noise[-1]:.3f})"
            )
    steps = EPOCHS * ROWS // BATCH
    print(
        f"Lightning fit with GradscopeCallback / without ({DEPTH} layers, {steps} steps): "
        f"median {statistics.median(ratios):.3f}x, spread {min(ratios):.3f}-{max(ratios):.3f}; "
        f"plain/plain median {statistics.median(noise):.3f}x, "
        f"spread {min(noise):.3f}-{max(noise):.3f} ({args.rounds} paired rounds); "
        f"added per fit: median {statistics.median(extra) * 1e3:.0f} ms "
        f"(init + watch + finish included), "
        f"{statistics.median(extra) / steps * 1e6:.0f} us per step"
    )


if __name__ == "__main__":
    main()
