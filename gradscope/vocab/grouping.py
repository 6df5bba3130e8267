"""Which runs may train together as one batched ensemble, and how a sweep is cut into groups.

Torch-free, so that queueing a sweep (the CLI, the dashboard) never loads torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from gradscope.vocab.config import SYNTHETIC_DATASETS, RunConfig

DEFAULT_MAX_GROUP = 32  # on a CPU the gain per model stopped growing at K of about 16-64


def group_key(cfg: RunConfig) -> tuple:
    """What members of one group must share: everything that shapes the stacked tensors.

    Members may differ in seed (init, data sampling and split, shuffle order), init scheme,
    learning rate, momentum, epochs, noise and name: each member loads its own data with its
    own seed, exactly as its solo run would, and the data are stacked as [K, N, features], so
    only the sizes must agree (samples and test fraction fix N; dataset fixes the features).
    Fields a dataset ignores are left out so they do not split groups needlessly.
    """
    return (
        cfg.arch,
        cfg.depth,
        cfg.width,
        cfg.block_activation if cfg.arch == "resnet" else None,
        cfg.dataset,
        cfg.samples if cfg.dataset in SYNTHETIC_DATASETS else None,
        cfg.test_fraction,
        cfg.label if cfg.is_csv else None,
        cfg.batch_size,
        cfg.optimizer,
        cfg.device,
    )


def plan_groups(cfgs: Sequence[RunConfig], max_size: int = DEFAULT_MAX_GROUP) -> list[list[int]]:
    """Indices into `cfgs`, grouped by `group_key` in order of first appearance and split into
    chunks of at most `max_size` whose sizes differ by at most one (40 -> 20 + 20, not 32 + 8,
    since a small group gains less). Groups of one are plain solo runs."""
    if max_size < 1:
        raise ValueError(f"max group size must be at least 1 (got {max_size})")
    by_key: dict[tuple, list[int]] = {}
    for i, cfg in enumerate(cfgs):
        by_key.setdefault(group_key(cfg), []).append(i)
    groups: list[list[int]] = []
    for members in by_key.values():
        groups.extend(_split_evenly(members, math.ceil(len(members) / max_size)))
    return groups


def _split_evenly(items: list[int], chunks: int) -> list[list[int]]:
    """`chunks` consecutive parts whose sizes differ by at most one, the larger ones first (as
    numpy's array_split cuts them; numpy is not imported for it: queueing stays cheap)."""
    size, extra = divmod(len(items), chunks)
    parts, start = [], 0
    for i in range(chunks):
        end = start + size + (1 if i < extra else 0)
        parts.append(items[start:end])
        start = end
    return parts
