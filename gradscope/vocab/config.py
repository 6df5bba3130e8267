"""RunConfig: one validated object that fully describes a run, saved with it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gradscope.vocab.stored_values import StoredValueError, clean_name
from gradscope.vocab.text import has_unsafe_chars

SYNTHETIC_DATASETS = ("moons", "circles", "xor", "spirals")
BUILTIN_DATASETS = (*SYNTHETIC_DATASETS, "breast_cancer")
ARCHS = ("sigmoid", "relu", "resnet")


class ConfigError(ValueError):
    """An invalid run configuration; the message names each bad field."""


class RunConfig(BaseModel):
    """Everything that determines a run. Defaults give the canonical picture in seconds:
    sigmoid stays at 50% with a constant output while relu and resnet reach 0.95-0.98."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    arch: Literal["sigmoid", "relu", "resnet"] = Field(
        "sigmoid", description="hidden-layer design: plain sigmoid, plain ReLU or residual blocks"
    )
    depth: int = Field(10, ge=1, le=200, description="hidden Linear layers (same for every arch)")
    width: int = Field(32, ge=1, le=4096, description="units per hidden layer")
    block_activation: Literal["relu", "sigmoid"] = Field(
        "relu", description="activation inside residual blocks (resnet only)"
    )
    dataset: str = Field(
        "moons", description="moons, circles, xor, spirals, breast_cancer or csv:PATH"
    )
    label: str = Field(
        "label", min_length=1, max_length=200, description="label column of a CSV dataset"
    )
    samples: int = Field(2048, ge=8, le=1_000_000, description="samples of synthetic datasets")
    noise: float = Field(0.2, ge=0, le=10, description="noise of synthetic datasets")
    test_fraction: float = Field(
        0.25, gt=0, lt=1, description="share of samples held out for testing"
    )
    epochs: int = Field(20, ge=1, le=100_000, description="passes over the training data")
    batch_size: int = Field(64, ge=1, le=1_000_000, description="examples per optimizer step")
    optimizer: Literal["sgd", "adam"] = Field("adam", description="optimizer")
    lr: float = Field(1e-3, gt=0, le=100, description="learning rate")
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD momentum")
    init: Literal["default", "xavier", "he"] = Field(
        "default",
        description="weight initialisation ('default' is PyTorch's, which is not He init)",
    )
    seed: int = Field(0, ge=0, le=2**31 - 1, description="random seed (data, weights, shuffling)")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="where to train (auto: cuda when available)"
    )
    name: str | None = Field(None, max_length=200, description="a name to find the run by")

    @field_validator("dataset", "label")
    @classmethod
    def _no_control_chars(cls, value: str) -> str:
        # A terminal obeys ESC, DEL, C1 and bidi controls: text holding them is refused here,
        # where every config is made (CLI, form, sweeps, imports), not only escaped on output.
        if has_unsafe_chars(value):
            raise ValueError("must not contain control characters (C0, DEL, C1 or bidi)")
        return value

    @field_validator("dataset")
    @classmethod
    def _dataset_known(cls, value: str) -> str:
        if value in BUILTIN_DATASETS:
            return value
        if value.startswith("csv:") and len(value) > 4:
            if len(value) > 300:
                raise ValueError("CSV path is too long (at most 296 characters)")
            return value
        raise ValueError(f"must be one of {', '.join(BUILTIN_DATASETS)} or csv:PATH")

    @field_validator("name")
    @classmethod
    def _name_printable(cls, value: str | None) -> str | None:
        # The rule every stored name follows (import checks the same): NFC, trimmed, visible.
        # pydantic names the field already ("name: ..."), so the rule's own prefix goes.
        try:
            return clean_name(value)
        except StoredValueError as exc:
            raise ValueError(str(exc).removeprefix("name: ")) from None

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        if self.optimizer == "adam" and self.momentum:
            raise ValueError("momentum applies to sgd only; use optimizer=sgd or momentum=0")
        return self

    @property
    def is_csv(self) -> bool:
        return self.dataset.startswith("csv:")

    @property
    def csv_path(self) -> str:
        return self.dataset[4:]


def format_validation_error(exc: ValidationError) -> str:
    """One line per bad field: `field: what is wrong (got value)`."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "config"
        msg = err["msg"].removeprefix("Value error, ")
        got = err.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{where}: {msg}{shown}")
    return "\n".join(lines)


def make_config(values: dict[str, Any]) -> RunConfig:
    """Validate a dict into a RunConfig, raising ConfigError with a readable message."""
    for key, value in values.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number (got {value})")
    try:
        return RunConfig(**values)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def with_absolute_csv(cfg: RunConfig) -> RunConfig:
    """The config with a relative `csv:` path made absolute (against this process's folder),
    so a worker started elsewhere trains on the same file. Applied where runs are created
    (train, submit, sweep, the dashboard's form), not in validation: stored configs, imported
    ones included, keep their paths."""
    if not cfg.is_csv or Path(cfg.csv_path).expanduser().is_absolute():
        return cfg
    absolute = Path(cfg.csv_path).expanduser().absolute()
    return make_config({**cfg.model_dump(), "dataset": f"csv:{absolute}"})
