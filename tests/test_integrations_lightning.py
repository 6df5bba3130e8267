"""The Lightning callback records a real `Trainer.fit` as one run whose statistics equal the same
training measured by `run.watch` in a plain loop: after gradient accumulation, before clipping."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

pl = pytest.importorskip("pytorch_lightning")

from integration_helpers import assert_same_statistics, run_ids, run_row  # noqa: E402

import gradscope  # noqa: E402
from gradscope.integrations.lightning import GradscopeCallback, epoch_values  # noqa: E402

ROWS, BATCH, ACCUMULATE, EPOCHS, CLIP, LR = 48, 8, 2, 2, 0.05, 0.2


def data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(ROWS, 6, generator=g)
    return x, (x[:, :2].sum(1, keepdim=True) > 0).float()


def net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)
    )


class Module(pl.LightningModule):
    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _i: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.binary_cross_entropy_with_logits(self.body(x), y)
        self.log("train_loss", loss, on_step=False, on_epoch=True)
        self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_epoch=True)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=LR)


def loader() -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(*data()), batch_size=BATCH)


def trainer(callback: GradscopeCallback | None, **kw: object) -> pl.Trainer:
    return pl.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback] if callback else [],
        **kw,
    )


def plain_loop(db: Path, body: nn.Module) -> str:
    """The same training by hand: accumulate ACCUMULATE batches (each loss / ACCUMULATE, as
    Lightning scales it), then clip and step. The clip is a step pre-hook registered after
    watch()'s, so the recorded gradient is the unclipped one, as the callback records it."""
    optimizer = torch.optim.SGD(body.parameters(), lr=LR)
    with gradscope.init(db=str(db), name="plain", quiet=True) as run:
        holder = nn.Module()  # named as in the LightningModule: body.0, body.2, body.4
        holder.body = body
        run.watch(holder, optimizer)

        def clip(*_: object) -> None:
            nn.utils.clip_grad_norm_(body.parameters(), CLIP)

        optimizer.register_step_pre_hook(clip)
        for _ in range(EPOCHS):
            for i, (x, y) in enumerate(loader()):
                loss = nn.functional.binary_cross_entropy_with_logits(body(x), y)
                (loss / ACCUMULATE).backward()
                if (i + 1) % ACCUMULATE == 0:
                    optimizer.step()
                    optimizer.zero_grad()
            run.log_epoch()
    return run.id


@pytest.mark.slow
def test_lightning_fit_records_the_statistics_of_a_plain_loop(db_path: Path) -> None:
    body = net()
    reference = copy.deepcopy(body)
    callback = GradscopeCallback(db=str(db_path), name="lightning", quiet=True)
    fit = trainer(callback, accumulate_grad_batches=ACCUMULATE, gradient_clip_val=CLIP)
    fit.fit(Module(body), loader())
    plain = plain_loop(db_path, reference)
    (recorded,) = run_ids(db_path, "lightning")
    # The clipped training stays the same training: same weights at the end.
    for a, b in zip(body.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    compared = assert_same_statistics(db_path, recorded, plain, rtol=1e-5, hist_slack=2)
    assert compared == EPOCHS * 3 * 6
    row = run_row(db_path, recorded)
    assert (row["status"], row["epochs_done"], row["depth"]) == ("completed", EPOCHS, 3)
    assert callback.run.id == recorded
    # Layer names are the LightningModule's own (no wrapper prefix).
    import sqlite3

    with sqlite3.connect(db_path) as conn:
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM run_layers WHERE run_id = ? ORDER BY layer", (recorded,)
            )
        ]
        logged = dict(
            conn.execute(
                "SELECT name, COUNT(*) FROM run_metrics WHERE run_id = ? GROUP BY name", (recorded,)
            )
        )
        losses = [
            r[0]
            for r in conn.execute(
                "SELECT train_loss FROM epoch_metrics WHERE run_id = ? ORDER BY epoch", (recorded,)
            )
        ]
    assert names == ["body.0", "body.2", "body.4"]
    # What the module logged, once per epoch (lr_step, the last batch's, is left out).
    assert logged == {"train_loss": EPOCHS, "lr": EPOCHS, "lr_epoch": EPOCHS}
    assert len(losses) == EPOCHS and all(0 < v < 1 for v in losses)


@pytest.mark.slow
def test_every_n_steps_and_a_failing_fit(db_path: Path) -> None:
    """every=2 measures steps 1, 3, ...; an exception in training_step fails the run with its
    text (Lightning re-raises it)."""
    callback = GradscopeCallback(db=str(db_path), name="every", every=2, quiet=True)
    trainer(callback).fit(Module(net()), loader())
    assert run_row(db_path, callback.run.id)["status"] == "completed"
    assert callback.run._watcher is not None and callback.run._watcher.total_steps == EPOCHS * 6

    class Broken(Module):
        def training_step(self, batch: object, i: int) -> torch.Tensor:
            if self.current_epoch == 1:
                raise RuntimeError("boom in epoch 2")
            return super().training_step(batch, i)

    failing = GradscopeCallback(db=str(db_path), name="broken", quiet=True)
    with pytest.raises(RuntimeError, match="boom"):
        trainer(failing).fit(Broken(net()), loader())
    row = run_row(db_path, failing.run.id)
    assert row["status"] == "failed" and "boom in epoch 2" in row["error"]
    assert row["epochs_done"] == 1


def test_logged_metrics_map_to_epoch_fields_and_free_metrics() -> None:
    known, free = epoch_values(
        {
            "train_loss_epoch": torch.tensor(0.5),
            "val_acc": torch.tensor(0.75),
            "n": 3,
            "x_step": 1.0,
            "x_epoch": 2.0,
            "vector": torch.ones(3),
            "flag": True,
        }
    )
    assert set(known) == {"train_loss", "test_acc"}
    assert float(known["test_acc"]) == 0.75
    assert set(free) == {"train_loss_epoch", "val_acc", "n", "x_epoch"}  # scalars only


def test_every_must_be_a_positive_integer() -> None:
    with pytest.raises(ValueError, match="every"):
        GradscopeCallback(every=0)
