"""The Hugging Face callback records a real `Trainer.train()` of a tiny BERT built from a config
(no download) as one run whose statistics equal the same training measured by `run.watch` in a
plain loop: after gradient clipping, as the Trainer's on_pre_optimizer_step sees it."""

from __future__ import annotations

import copy
import sqlite3
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

from integration_helpers import assert_same_statistics, run_ids, run_row  # noqa: E402
from transformers import (  # noqa: E402
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

import gradscope  # noqa: E402
from gradscope.integrations.transformers import GradscopeCallback, logged_numbers  # noqa: E402

ROWS, BATCH, EPOCHS, LR, CLIP, SEQ = 32, 8, 2, 0.5, 1.0, 12


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=40,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=SEQ,
        num_labels=2,
        hidden_dropout_prob=0.0,  # the plain loop must see the same forward passes
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config)


def examples(seed: int) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 40, (ROWS, SEQ), generator=g)
    labels = (ids[:, 0] < 20).long()
    return [
        {
            "input_ids": ids[i],
            "attention_mask": torch.ones(SEQ, dtype=torch.long),
            "labels": labels[i],
        }
        for i in range(ROWS)
    ]


class InOrder(Trainer):
    """Batches in dataset order, so that the plain loop can repeat them."""

    def _get_train_sampler(self, *args: object, **kwargs: object) -> torch.utils.data.Sampler:
        return torch.utils.data.SequentialSampler(self.train_dataset)


def hf_train(
    db: Path, model: BertForSequenceClassification, out: Path, name: str
) -> GradscopeCallback:
    callback = GradscopeCallback(db=str(db), name=name, quiet=True)
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=BATCH,
        per_device_eval_batch_size=BATCH,
        num_train_epochs=EPOCHS,
        max_grad_norm=CLIP,
        lr_scheduler_type="constant",
        logging_steps=1,
        eval_strategy="epoch",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=0,
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    InOrder(
        model=model,
        args=args,
        train_dataset=examples(1),
        eval_dataset=examples(2),
        data_collator=default_data_collator,
        optimizers=(optimizer, None),
        callbacks=[callback],
    ).train()
    return callback


def plain_loop(db: Path, model: BertForSequenceClassification) -> str:
    """The same training by hand: clip, then step; watch()'s pre-hook reads the gradient at
    the step, after the clip, where the Trainer's on_pre_optimizer_step is."""
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    data = examples(1)
    model.train()
    with gradscope.init(db=str(db), name="plain", quiet=True) as run:
        run.watch(model, optimizer)
        for _ in range(EPOCHS):
            for start in range(0, ROWS, BATCH):
                batch = default_data_collator(data[start : start + BATCH])
                model(**batch).loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), CLIP)
                optimizer.step()
                optimizer.zero_grad()
            run.log_epoch()
    return run.id


@pytest.mark.slow
def test_hf_trainer_records_the_statistics_of_a_plain_loop(db_path: Path, tmp_path: Path) -> None:
    model = tiny_bert()
    reference = copy.deepcopy(model)
    callback = hf_train(db_path, model, tmp_path / "out", "hf")
    plain = plain_loop(db_path, reference)
    (recorded,) = run_ids(db_path, "hf")
    for a, b in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    compared = assert_same_statistics(db_path, recorded, plain, rtol=1e-4, atol=1e-8, hist_slack=4)
    row = run_row(db_path, recorded)
    assert (row["status"], row["epochs_done"]) == ("completed", EPOCHS)
    assert compared == EPOCHS * row["depth"] * 6 and row["depth"] > 10
    assert callback.run.id == recorded
    with sqlite3.connect(db_path) as conn:
        names = [
            r[0] for r in conn.execute("SELECT name FROM run_layers WHERE run_id = ?", (recorded,))
        ]
        logged = dict(
            conn.execute(
                "SELECT name, COUNT(*) FROM run_metrics WHERE run_id = ? GROUP BY name", (recorded,)
            )
        )
        epochs = conn.execute(
            "SELECT train_loss, test_loss FROM epoch_metrics WHERE run_id = ? ORDER BY epoch",
            (recorded,),
        ).fetchall()
    assert "bert.encoder.layer.0.attention.self.query" in names and "classifier" in names
    steps = EPOCHS * ROWS // BATCH
    assert logged["loss"] == steps and logged["grad_norm"] == steps  # logging_steps=1
    assert logged["eval_loss"] == EPOCHS
    # Each epoch closes with its own evaluation (logged after on_epoch_end).
    assert len(epochs) == EPOCHS and all(t is not None and e is not None for t, e in epochs)


def test_logged_numbers_skip_bookkeeping() -> None:
    found = logged_numbers({"loss": 0.5, "epoch": 1.0, "grad_norm": 2, "flag": True, "s": "x"})
    assert found == {"loss": 0.5, "grad_norm": 2.0}
