"""PyTorch Lightning: `Trainer(callbacks=[GradscopeCallback(db="runs.db", name="my-net")])`.

Hooks, in the order a fit calls them:
- `on_fit_start`: `gradscope.init()` (the job's one run: on rank 0; other DDP ranks get a run
  that records nothing, gradscope.api.distributed);
- `on_train_start`: `run.watch(pl_module, trainer.optimizers)` (the LightningModule itself, so
  layer names carry no DDP `module.` prefix);
- `on_before_optimizer_step`: measures the step. Lightning calls it once per optimizer step,
  after gradient accumulation (the summed gradient of the accumulated batches, as the step
  uses it) and BEFORE gradient clipping (`gradient_clip_val`): the recorded gradient is the
  unclipped one, which is what shows a vanishing or exploding gradient. The API's own
  optimizer pre-hook cannot be used: Lightning runs backward inside `optimizer.step(closure)`,
  after the step's pre-hooks, so it would see the previous step's gradient. Under a
  GradScaler (precision="16-mixed") Lightning steps through `scaler.step(optimizer)` after the
  closure, so the pre-hook sees the unscaled gradient and skips overflowing steps: there the
  pre-hook measures (an overflow the scaler skips is not recorded as a divergence);
- `on_train_epoch_end`: closes an epoch (`run.log_epoch`) with what the LightningModule logged
  (`trainer.callback_metrics`): every scalar as a free metric, and train/val loss and accuracy
  (names below) as the epoch's train/test values;
- `on_fit_end`: finishes the run (completed, or diverged); `on_exception`: failed with the
  exception's text, interrupted for a KeyboardInterrupt.

The callback adds its hook calls to a fit and nothing else (docs/integrations.md measures it).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import Callback

import gradscope
from gradscope.integrations import CallbackSettings

# Which logged names become the epoch's train/test loss and accuracy (first found wins);
# validation is the held-out set, as "test" is in built-in runs.
KNOWN = {
    "train_loss": ("train_loss_epoch", "train_loss", "train/loss", "loss"),
    "train_acc": ("train_acc_epoch", "train_acc", "train/acc", "train_accuracy"),
    "test_loss": ("val_loss", "val/loss", "valid_loss", "test_loss", "test/loss"),
    "test_acc": ("val_acc", "val/acc", "val_accuracy", "valid_acc", "test_acc", "test/acc"),
}


def epoch_values(metrics: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """From logged metrics: (the epoch's known fields, every one-element value as a free
    metric). Tensors stay tensors (read later, on the run's measuring thread)."""
    free: dict[str, Any] = {}
    for key, value in metrics.items():
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            free[str(key)] = value.detach()
        elif isinstance(value, int | float) and not isinstance(value, bool):
            free[str(key)] = float(value)
    # `self.log(on_step=True, on_epoch=True)` gives x, x_step and x_epoch: at an epoch's end
    # x_step is only the last batch's value, so it is left out.
    for key in [k for k in free if k.endswith("_step") and f"{k[:-5]}_epoch" in free]:
        del free[key]
    known = {}
    for field, names in KNOWN.items():
        found = next((free[n] for n in names if n in free), None)
        if found is not None:
            known[field] = found
    return known, free


class GradscopeCallback(CallbackSettings, Callback):
    """Records a Lightning fit as one gradscope run: per-layer gradient statistics of every
    `every`-th optimizer step (before clipping, after accumulation), one epoch per training
    epoch, the logged metrics, and the fit's outcome. `db`, `name`, `config` and `quiet` are
    gradscope.init's; `probe` is run.watch's (an input batch for activation health)."""

    def __init__(
        self,
        db: str | None = None,
        name: str | None = None,
        every: int = 1,
        *,
        config: dict[str, Any] | None = None,
        probe: Any = None,
        quiet: bool | None = None,
    ) -> None:
        super().__init__(db, name, every, config=config, probe=probe, quiet=quiet)
        self._measure: dict[int, Callable[[], None]] = {}  # id(optimizer) -> measure its step

    # -- start ----------------------------------------------------------------------------
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run is not None and self.run.status == "running":
            self.run.finish()  # a second fit() with the same callback: a new run
        facts = {
            "max_epochs": trainer.max_epochs,
            "accumulate_grad_batches": trainer.accumulate_grad_batches,
            "gradient_clip_val": trainer.gradient_clip_val,
            "precision": str(trainer.precision),
            "every": self.every,
            "trainer": "pytorch_lightning",
        }
        config = {**facts, **(self.config or {})}
        self.run = gradscope.init(db=self.db, name=self.name, config=config, quiet=self.quiet)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        optimizers = list(trainer.optimizers)
        self.run.watch(pl_module, optimizers, probe=self.probe, every=self.every)
        watcher = getattr(self.run, "_watcher", None)  # None on a silent rank
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        self._measure = {}
        if watcher is not None and scaler is None:
            # Backward runs inside optimizer.step(closure): measure from the callback instead.
            for optimizer, measure in zip(watcher.optimizers, watcher.drive(), strict=True):
                self._measure[id(optimizer)] = measure

    # -- each step --------------------------------------------------------------------------
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        # Lightning hands the torch optimizer (a LightningOptimizer wraps it as _optimizer).
        inner = getattr(optimizer, "_optimizer", optimizer)
        measure = self._measure.get(id(inner))
        if measure is not None:
            measure()

    # -- each epoch -------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run is None or trainer.sanity_checking:
            return
        known, free = epoch_values(trainer.callback_metrics)
        if free:
            self.run.log(free)
        self.run.log_epoch(**known)

    # -- the outcome ------------------------------------------------------------------------
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.run is not None:
            self.run.finish()  # completed (diverged if it did)

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        # The run's own exit: failed with the exception's text, interrupted for Ctrl-C.
        if self.run is not None and self.run.status == "running":
            self.run.__exit__(type(exception), exception, exception.__traceback__)
