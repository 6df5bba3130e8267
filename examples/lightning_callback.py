"""A PyTorch Lightning fit recorded by gradscope's callback: one run, a layer per weight,
gradients measured at every optimizer step before clipping, the module's logged metrics kept.

    python examples/lightning_callback.py --db lightning.db --epochs 3
    gradscope dashboard --db lightning.db
"""

from __future__ import annotations

import argparse

import pytorch_lightning as pl
import torch
from torch import nn

from gradscope.integrations.lightning import GradscopeCallback


class Classifier(pl.LightningModule):
    """A deep sigmoid MLP: the gradient fades towards the input layers (see the dashboard)."""

    def __init__(self, depth: int = 6) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(2, 32), nn.Sigmoid()]
        for _ in range(depth - 2):
            layers += [nn.Linear(32, 32), nn.Sigmoid()]
        self.net = nn.Sequential(*layers, nn.Linear(32, 1))

    def step(self, batch: tuple[torch.Tensor, torch.Tensor], stage: str) -> torch.Tensor:
        x, y = batch
        logits = self.net(x)
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
        acc = ((logits > 0).float() == y).float().mean()
        self.log(f"{stage}_loss", loss, on_epoch=True, on_step=False)
        self.log(f"{stage}_acc", acc, on_epoch=True, on_step=False)
        return loss

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _i: int) -> torch.Tensor:
        return self.step(batch, "train")

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _i: int) -> None:
        self.step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.5)


def moons(n: int, seed: int) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * torch.pi
    upper = torch.rand(n, generator=g) < 0.5
    x = torch.stack([torch.cos(t), torch.sin(t)], 1)
    x = torch.where(upper[:, None], x, torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], 1))
    x = x + 0.1 * torch.randn(n, 2, generator=g)
    return torch.utils.data.TensorDataset(x, upper.float()[:, None])


def main() -> None:
    parser = argparse.ArgumentParser(description="Record a Lightning fit with gradscope.")
    parser.add_argument("--db", default="lightning.db")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(moons(512, 0), batch_size=32, shuffle=True)
    val = torch.utils.data.DataLoader(moons(256, 1), batch_size=128)
    callback = GradscopeCallback(db=args.db, name="lightning moons", quiet=True)
    trainer = pl.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        devices=1,
        callbacks=[callback],
        gradient_clip_val=1.0,  # the callback records the gradient before this clipping
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(Classifier(), loader, val)
    print(f"recorded run {callback.run.id} ({callback.run.status})")


if __name__ == "__main__":
    main()
