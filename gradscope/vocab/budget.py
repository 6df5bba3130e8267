"""A run's model size from its config alone (no torch), and the budget queued runs must fit.

The count matches gradscope.runner.networks.MLP: `depth` hidden Linear layers of `width` units
after the
input, then Linear(width, 1); weights and biases. Depth 200 x width 4096 is 3.4 billion
parameters (~90 GB to train): a dashboard visitor must not be able to queue that.
"""

from __future__ import annotations

import os

from gradscope.vocab.config import SYNTHETIC_DATASETS, ConfigError, RunConfig

MAX_PARAMS_ENV = "GRADSCOPE_MAX_PARAMS"
# 10 million parameters: ~40 MB of weights, a few hundred MB to train with Adam; far above
# anything the phenomenon needs (depth 50 x width 256 is 3.3 million).
DEFAULT_MAX_PARAMS = 10_000_000
BREAST_CANCER_FEATURES = 30


def input_features(cfg: RunConfig) -> int:
    """Features of the run's dataset; for a CSV file (unknown here) 1, the smallest."""
    if cfg.dataset in SYNTHETIC_DATASETS:
        return 2
    if cfg.dataset == "breast_cancer":
        return BREAST_CANCER_FEATURES
    return 1


def parameter_count(cfg: RunConfig, n_features: int | None = None) -> int:
    """Weights and biases of the run's model (every architecture has the same Linears)."""
    features = input_features(cfg) if n_features is None else n_features
    width = cfg.width
    return (features + 1) * width + (cfg.depth - 1) * (width + 1) * width + (width + 1)


def max_params() -> int:
    """The budget: $GRADSCOPE_MAX_PARAMS (set by --max-params), else DEFAULT_MAX_PARAMS."""
    try:
        value = int(os.environ.get(MAX_PARAMS_ENV, DEFAULT_MAX_PARAMS))
    except ValueError:
        return DEFAULT_MAX_PARAMS
    return value if value > 0 else DEFAULT_MAX_PARAMS


def check_budget(cfg: RunConfig, limit: int | None = None) -> None:
    """ConfigError (naming depth and width) when the run's model is over the budget."""
    allowed = max_params() if limit is None else limit
    count = parameter_count(cfg)
    if count > allowed:
        raise ConfigError(
            f"width: depth {cfg.depth} x width {cfg.width} is {count:,} parameters; queued "
            f"runs may have at most {allowed:,} (--max-params)"
        )
