"""Free metrics (`run.log`): what a metric's name may be, how many a run may hold, and how names
pair up for charts. Torch-, numpy- and SQL-free: the API that writes them, the import that
checks them and the dashboard that charts them agree through this module.

A metric row is (name, step, epoch, value): `step` the training step it was logged at, `epoch` the
epoch it fell in (1-based: the epoch in progress, that the next `log_epoch` closes). A run that
never closed an epoch still has its steps in epoch 1, so a stored epoch lies in 1..epochs + 1.
NaN is stored as NULL (read back NaN), infinities as they are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from gradscope.vocab.fields import MAX_METRIC_NAME_CHARS
from gradscope.vocab.text import has_unsafe_chars

# Limits: a name's length is the column's; the counts keep one run's table a size that the
# dashboard charts and an import checks in seconds (the share limit is 2M rows per table).
MAX_METRIC_NAMES = 500  # distinct names per run
MAX_METRICS_PER_CALL = 200  # names in one run.log call (one step)
MAX_METRIC_ROWS = 1_000_000  # rows per run, all names together
MAX_STEP = 2**62  # a step must fit the BIGINT column with room to spare

# Pairs by convention: "train/loss" & "test/loss", "train_loss" & "val_loss", "loss/train" ...
_SPLITS = ("train", "test", "val", "valid", "validation", "eval")
_PREFIX = re.compile(rf"^({'|'.join(_SPLITS)})([/_.\-])(.+)$", re.IGNORECASE)
_SUFFIX = re.compile(rf"^(.+)([/_.\-])({'|'.join(_SPLITS)})$", re.IGNORECASE)


class MetricError(ValueError):
    """A metric that cannot be stored (bad name, value, step, or over a limit)."""


def metric_name_problem(name: object) -> str | None:
    """Why `name` is not a valid metric name, or None. Valid: text of 1..MAX_METRIC_NAME_CHARS
    printable characters (no control or bidi characters), no leading or trailing space."""
    if not isinstance(name, str):
        return f"a metric name must be text, got {type(name).__name__}"
    if not name or name != name.strip():
        return f"metric name {name!r} is empty or starts or ends with a space"
    if len(name) > MAX_METRIC_NAME_CHARS:
        limit = MAX_METRIC_NAME_CHARS
        return f"metric name {name[:20]!r}... is {len(name)} characters; at most {limit}"
    if has_unsafe_chars(name) or not name.isprintable():
        return f"metric name {name!r} holds control characters; use printable text"
    return None


def metric_count_problem(names: int, rows: int) -> str | None:
    """Why a run with `names` distinct metric names and `rows` values is over the per-run
    limits run.log keeps (checked again on import: a file may be written by anyone), or None.
    The per-call limit is not a stored fact (several calls may log at one step)."""
    if names > MAX_METRIC_NAMES:
        return f"the run logs more than {MAX_METRIC_NAMES} distinct metric names"
    if rows > MAX_METRIC_ROWS:
        return f"the run logs more than {MAX_METRIC_ROWS:,} metric values"
    return None


def check_step(step: object) -> int:
    """A step as stored: a non-negative integer (not a bool) below MAX_STEP."""
    if isinstance(step, bool) or not isinstance(step, int):
        index = getattr(step, "__index__", None)  # numpy / 0-d integer tensors
        if index is None or isinstance(step, bool):
            raise MetricError(f"step must be an integer, got {type(step).__name__}")
        step = index()
    assert isinstance(step, int)
    if not 0 <= step < MAX_STEP:
        raise MetricError(f"step must lie in 0..{MAX_STEP - 1}, got {step}")
    return step


def split_of(name: str) -> tuple[str, str] | None:
    """(the split, the name without it) when a name follows the train/test convention, e.g.
    "train/loss" -> ("train", "loss"), "val_acc" -> ("val", "acc"), "loss/test" -> ("test",
    "loss"); None otherwise."""
    found = _PREFIX.match(name)
    if found:
        return found.group(1).lower(), found.group(3)
    found = _SUFFIX.match(name)
    if found:
        return found.group(3).lower(), found.group(1)
    return None


def metric_panels(names: Iterable[str]) -> list[tuple[str, list[str]]]:
    """The charts for these metric names: one panel per quantity, holding its train/test/val
    names together ("loss": ["train/loss", "test/loss"]), and one per other name; in first-seen
    order. A pair's title is the shared part; a name alone is its own title."""
    panels: dict[str, list[str]] = {}
    for name in dict.fromkeys(names):
        split = split_of(name)
        key = f"\x00{split[1]}" if split else name  # paired titles never clash with plain names
        panels.setdefault(key, []).append(name)
    out = []
    for key, members in panels.items():
        if key.startswith("\x00") and len(members) == 1:
            out.append((members[0], members))  # a lone "train/loss": shown under its name
        else:
            out.append((key.lstrip("\x00"), members))
    return out


MAX_SHOWN_POINTS = 5_000  # per name in `gradscope show --json`; the export has every row


def metric_series(
    rows: Iterable[tuple[str, int | None, int | None, float | None]],
    max_points: int = MAX_SHOWN_POINTS,
) -> dict[str, dict[str, object]]:
    """Rows (name, step, epoch, value), grouped by name in the order given, as columns:
    {name: {"rows": n, "every": k, "step": [...], "epoch": [...], "value": [...]}}. A name with
    more than `max_points` rows keeps every k-th row and its last one (`every` says k)."""
    grouped: dict[str, list[tuple[int | None, int | None, float | None]]] = {}
    for name, step, epoch, value in rows:
        grouped.setdefault(name, []).append((step, epoch, value))
    out: dict[str, dict[str, object]] = {}
    for name, series in grouped.items():
        every = -(-len(series) // max_points)
        kept = series[::every]
        if every > 1 and (len(series) - 1) % every:
            kept.append(series[-1])
        out[name] = {
            "rows": len(series),
            "every": every,
            "step": [r[0] for r in kept],
            "epoch": [r[1] for r in kept],
            "value": [r[2] for r in kept],
        }
    return out
