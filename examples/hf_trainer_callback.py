"""A Hugging Face Trainer run recorded by gradscope's callback: a tiny BERT built from a config
(nothing downloaded) classifying random token sequences; one run, a layer per weight.

    python examples/hf_trainer_callback.py --db hf.db --epochs 2
    gradscope dashboard --db hf.db
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    Trainer,
    TrainingArguments,
    default_data_collator,
)

from gradscope.integrations.transformers import GradscopeCallback

SEQ, VOCAB = 16, 64


def dataset(n: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Label 1 when the first token is in the vocabulary's lower half."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (n, SEQ), generator=g)
    labels = (ids[:, 0] < VOCAB // 2).long()
    mask = torch.ones(SEQ, dtype=torch.long)
    return [{"input_ids": ids[i], "attention_mask": mask, "labels": labels[i]} for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description="Record a Hugging Face Trainer run.")
    parser.add_argument("--db", default="hf.db")
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=SEQ,
        num_labels=2,
    )
    model = BertForSequenceClassification(config)
    callback = GradscopeCallback(db=args.db, name="hf tiny bert", quiet=True)
    with tempfile.TemporaryDirectory() as out:
        training = TrainingArguments(
            output_dir=out,
            per_device_train_batch_size=16,
            num_train_epochs=args.epochs,
            learning_rate=1e-3,
            logging_steps=4,
            eval_strategy="epoch",
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
        )
        trainer = Trainer(
            model=model,
            args=training,
            train_dataset=dataset(128, 1),
            eval_dataset=dataset(64, 2),
            data_collator=default_data_collator,
            callbacks=[callback],
        )
        trainer.train()
    print(f"recorded run {callback.run.id} ({callback.run.status})")


if __name__ == "__main__":
    main()
