"""The Hugging Face Trainer: `Trainer(..., callbacks=[GradscopeCallback(db="runs.db")])`.

Hooks, in the order a `trainer.train()` calls them:
- `on_train_begin`: `gradscope.init()` (the job's one run: on rank 0; other DDP ranks get a run
  that records nothing, gradscope.api.distributed) and `run.watch(model, optimizer)` with the
  torch optimizer inside accelerate's wrapper;
- `on_pre_optimizer_step` (transformers >= 4.41): measures the step. The Trainer calls it once
  per optimizer step, after gradient accumulation and AFTER gradient clipping
  (`max_grad_norm`, 1.0 by default): the recorded gradient is the clipped one the optimizer
  uses. The Trainer's own logged `grad_norm` (the total norm before clipping) is kept as a free
  metric. Under a GradScaler (fp16) the torch optimizer's step pre-hook measures instead,
  after unscaling, so a step the scaler skips is not measured; so it does in an older
  transformers without on_pre_optimizer_step (the same moment: right before
  `optimizer.step()`);
- `on_log`: every number the Trainer logs (loss, grad_norm, learning_rate, eval_*) as a free
  metric at its global step;
- `on_epoch_end`: the epoch is closed once that epoch's evaluation has been logged (the Trainer
  evaluates after on_epoch_end): at the next epoch's start, or at the end of training, with
  the epoch's last logged loss and eval_loss / eval_accuracy as train/test values;
- `on_train_end`: finishes the run (completed, or diverged). An exception out of `train()`
  fails the run through gradscope's exit hook (interrupted for Ctrl-C): the Trainer has no
  exception callback.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from transformers import TrainerCallback

import gradscope
from gradscope.integrations import CallbackSettings

# Logged keys that are the x-axis or bookkeeping, not metrics of the training.
SKIPPED = {"epoch", "total_flos", "step"}
# What the Trainer's argument object contributes to the run's config.
ARGS_KEPT = (
    "learning_rate",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_grad_norm",
    "num_train_epochs",
    "max_steps",
    "weight_decay",
    "lr_scheduler_type",
    "optim",
    "seed",
    "fp16",
    "bf16",
)


def logged_numbers(logs: Mapping[str, Any]) -> dict[str, float]:
    """The logged values that are metrics: finite or not, numbers only."""
    return {
        str(k): float(v)
        for k, v in logs.items()
        if k not in SKIPPED and isinstance(v, int | float) and not isinstance(v, bool)
    }


class GradscopeCallback(CallbackSettings, TrainerCallback):
    """Records a `Trainer.train()` as one gradscope run: per-layer statistics of every `every`-th
    optimizer step (after accumulation and clipping), one epoch per training epoch, the
    Trainer's logs, and the outcome. `db`, `name`, `config` and `quiet` are gradscope.init's;
    `probe` is run.watch's (an input batch, e.g. a tokenized dict, for activation health)."""

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
        self._measure: Callable[[], None] | None = None
        self._epoch_done = False  # on_epoch_end seen, the epoch not closed yet
        self._epoch_logs: dict[str, float] = {}
        self._steps_at_close = 0  # run.step when the last epoch was closed

    def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.run is not None and self.run.status == "running":
            self.run.finish()  # a second train() with the same callback: a new run
        kept = {k: getattr(args, k) for k in ARGS_KEPT if hasattr(args, k)}
        kept = {
            k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in kept.items()
        }
        config = {**kept, "every": self.every, "trainer": "transformers", **(self.config or {})}
        self.run = gradscope.init(db=self.db, name=self.name, config=config, quiet=self.quiet)
        self._epoch_done, self._epoch_logs, self._measure = False, {}, None
        self._steps_at_close = 0
        model, optimizer = kw.get("model"), kw.get("optimizer")
        if model is None or optimizer is None:
            raise RuntimeError("gradscope: the Trainer handed no model/optimizer to on_train_begin")
        # accelerate's AcceleratedOptimizer holds the torch optimizer (its step hooks fire there).
        inner = getattr(optimizer, "optimizer", optimizer)
        self.run.watch(model, inner, probe=self.probe, every=self.every)
        watcher = getattr(self.run, "_watcher", None)  # None on a silent rank
        scaler = getattr(optimizer, "scaler", None)
        if watcher is not None and scaler is None and _has_pre_optimizer_step():
            (self._measure,) = watcher.drive()

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self._measure is not None:
            self._measure()

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._close_epoch()

    def on_log(
        self, args: Any, state: Any, control: Any, logs: Mapping[str, Any] | None = None, **kw: Any
    ) -> None:
        if self.run is None or self.run.status != "running" or not logs:
            return
        numbers = logged_numbers(logs)
        if numbers:
            self.run.log(numbers, step=int(state.global_step))
            self._epoch_logs.update(numbers)

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        self._epoch_done = True  # closed after this epoch's evaluation is logged

    def on_train_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
        if self.run is None or self.run.status != "running":
            return
        # The last epoch, or steps after it (max_steps stopping mid-epoch).
        self._close_epoch(force=self.run.step > self._steps_at_close)
        self.run.finish()

    # -- closing an epoch -------------------------------------------------------------------
    def _close_epoch(self, *, force: bool = False) -> None:
        if self.run is None or self.run.status != "running" or not (self._epoch_done or force):
            return
        logs = self._epoch_logs
        known = {
            "train_loss": logs.get("loss"),
            "test_loss": logs.get("eval_loss"),
            "test_acc": logs.get("eval_accuracy"),
        }
        self.run.log_epoch(**{k: v for k, v in known.items() if v is not None})
        self._epoch_done, self._epoch_logs, self._steps_at_close = False, {}, self.run.step


def _has_pre_optimizer_step() -> bool:
    return hasattr(TrainerCallback, "on_pre_optimizer_step")
