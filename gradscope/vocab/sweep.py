"""Sweeps: a grid of run configurations, validated as a whole and queued as one sweep.

Every RunConfig option may be a comma list; the sweep is the cartesian product of the lists.
Validation is all or nothing: every combination is checked before anything is written, and
one bad value anywhere means nothing is queued.
"""

from __future__ import annotations

import itertools
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from gradscope.vocab.config import ConfigError, RunConfig, make_config, with_absolute_csv
from gradscope.vocab.fields import MAX_NAME_CHARS
from gradscope.vocab.grouping import DEFAULT_MAX_GROUP, plan_groups
from gradscope.vocab.records import RunSpec

MAX_SWEEP_RUNS = 10_000
# A generated run name longer than a run's name may be is shortened.
MAX_RUN_NAME = MAX_NAME_CHARS
ELLIPSIS = "…"
DEFAULT_GROUP_SIZE = DEFAULT_MAX_GROUP
# Shown at most this many distinct combination errors, then a count of the rest.
MAX_ERROR_LINES = 10


@dataclass(frozen=True)
class SweepPlan:
    """A validated sweep, ready to queue: nothing has been written yet."""

    sweep_id: str
    name: str
    specs: tuple[RunSpec, ...]
    notes: tuple[str, ...] = ()  # e.g. duplicate values that were collapsed

    @property
    def size(self) -> int:
        return len(self.specs)


# A comma inside a value (a CSV path such as csv:/data/a,b.csv) is written `\,`.
_UNESCAPED_COMMA = re.compile(r"(?<!\\),")


def split_list(text: str) -> list[str]:
    """A comma list's items, stripped; `\\,` is a comma inside an item."""
    return [item.strip().replace("\\,", ",") for item in _UNESCAPED_COMMA.split(text)]


def _same_value_key(field: str, item: str) -> object:
    """What `item` means for `field` (1e-3 and 0.001 are one learning rate), or the text
    itself when it is not valid alone (validate_grid reports it)."""
    try:
        return getattr(make_config({field: item}), field)
    except ConfigError:
        return ("text", item)


def collapse_duplicates(grid: Mapping[str, list[str]]) -> tuple[dict[str, list[str]], list[str]]:
    """Each axis with values that mean the same kept once (the first spelling), and a note per
    collapsed axis, so `--lr 1e-3,0.001` queues one run, not two identical ones."""
    collapsed: dict[str, list[str]] = {}
    notes: list[str] = []
    for field, items in grid.items():
        kept: dict[object, str] = {}
        dropped: list[str] = []
        for item in items:
            key = _same_value_key(field, item) if len(items) > 1 else item
            if key in kept:
                dropped.append(f"{item} (= {kept[key]})")
            else:
                kept[key] = item
        collapsed[field] = list(kept.values())
        if dropped:
            notes.append(f"{field}: dropped duplicate value(s) {', '.join(dropped)}")
    return collapsed, notes


def parse_grid(values: Mapping[str, str]) -> dict[str, list[str]]:
    """Split each option's comma list, in RunConfig field order (duplicates dropped; `\\,` is
    a comma inside a value). The run name is not a grid axis: it names the sweep."""
    grid: dict[str, list[str]] = {}
    problems = []
    for field in RunConfig.model_fields:
        if field == "name" or field not in values:
            continue
        items = split_list(str(values[field]))
        if any(not item for item in items):
            problems.append(f"{field}: empty value in the list {values[field]!r}")
            continue
        grid[field] = list(dict.fromkeys(items))
    unknown = sorted(set(values) - set(RunConfig.model_fields))
    problems += [f"{name}: not a run option" for name in unknown]
    if problems:
        raise ConfigError("\n".join(problems))
    return grid


def expand_grid(grid: Mapping[str, list[str]]) -> list[dict[str, str]]:
    """Every combination, the last option varying fastest (like nested loops)."""
    size = 1
    for items in grid.values():
        size *= len(items)
    if size > MAX_SWEEP_RUNS:
        raise ConfigError(f"the grid has {size} runs; a sweep holds at most {MAX_SWEEP_RUNS}")
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]


def describe(combo: Mapping[str, str], varying: list[str]) -> str:
    return " ".join(f"{k}={combo[k]}" for k in varying)


def sweep_name_of(name: str | None) -> str | None:
    """The sweep's name checked as a run's name is (RunConfig.name: at most 200 characters, no
    control characters, stripped), or None when blank. Raises ConfigError naming `name`."""
    if name is None:
        return None
    return make_config({"name": name}).name


def run_name(sweep_name: str, description: str) -> str:
    """`sweep name: arch=... depth=...`, at most MAX_RUN_NAME characters. The sweep's name is
    shortened first, so the part that tells its runs apart survives."""
    full = f"{sweep_name}: {description}" if description else sweep_name
    if len(full) <= MAX_RUN_NAME:
        return full
    room = MAX_RUN_NAME - len(f"{ELLIPSIS}: {description}")
    if description and room >= 20:  # enough of the sweep's name left to recognise it
        return f"{sweep_name[:room].rstrip()}{ELLIPSIS}: {description}"
    return full[: MAX_RUN_NAME - 1] + ELLIPSIS


def validate_grid(combos: list[dict[str, str]], varying: list[str]) -> list[RunConfig]:
    """Every combination as a RunConfig, or ConfigError naming each distinct problem."""
    configs: list[RunConfig] = []
    problems: list[str] = []
    for combo in combos:
        try:
            configs.append(with_absolute_csv(make_config(combo)))
        except ConfigError as exc:
            for line in str(exc).splitlines():
                # A field's own bad value reads the same in every combination; a conflict
                # between fields (config-level) says which combination has it.
                where = describe(combo, varying)
                problems.append(f"{where}: {line}" if line.startswith("config:") else line)
    if problems:
        distinct = list(dict.fromkeys(problems))
        shown = distinct[:MAX_ERROR_LINES]
        if len(distinct) > len(shown):
            shown.append(f"... and {len(distinct) - len(shown)} more")
        raise ConfigError("invalid sweep, nothing was queued:\n" + "\n".join(shown))
    return configs


def plan_sweep(
    values: Mapping[str, str],
    *,
    name: str | None = None,
    batch: bool = True,
    group_size: int = DEFAULT_GROUP_SIZE,
) -> SweepPlan:
    """Expand and validate a grid into run specs sharing one sweep id and name.

    With `batch` (the default), runs that share the ensemble's structural key
    (`gradscope.vocab.grouping.group_key`: same shape, data, batch size, optimizer kind and device;
    seeds, learning rates and epochs may differ) get a shared group id, in chunks of at most
    `group_size`, so a worker claims them together and trains them as one batched model.
    Raises ConfigError (nothing is written) on any invalid value.
    """
    if group_size < 1:
        raise ConfigError(f"group size must be at least 1 (got {group_size})")
    checked_name = sweep_name_of(name)  # first: a bad name is reported whatever the grid
    grid, notes = collapse_duplicates(parse_grid(values))
    varying = [k for k, items in grid.items() if len(items) > 1]
    combos = expand_grid(grid)
    configs = validate_grid(combos, varying)
    sweep_name = checked_name or ("sweep of " + ", ".join(varying) if varying else "sweep")
    specs = [
        RunSpec(
            cfg.model_dump(),
            name=run_name(sweep_name, describe(combo, varying)),
            sweep_id=None,
            sweep_name=sweep_name,
        )
        for cfg, combo in zip(configs, combos, strict=True)
    ]
    sweep_id = str(uuid.uuid4())
    for spec in specs:
        spec.sweep_id = sweep_id
    if batch:
        _assign_groups(specs, configs, group_size)
    return SweepPlan(sweep_id, sweep_name, tuple(specs), tuple(notes))


def _assign_groups(specs: list[RunSpec], configs: list[RunConfig], group_size: int) -> None:
    for members in plan_groups(configs, group_size):
        if len(members) < 2:
            continue  # a group of one is just a run
        group_id = str(uuid.uuid4())
        for position, index in enumerate(members):
            specs[index].group_id = group_id
            specs[index].group_index = position


def check_plan_budget(plan: SweepPlan, limit: int | None = None) -> None:
    """ConfigError naming the largest model when any run of the sweep is over the parameter
    budget (gradscope.vocab.budget); nothing is queued then."""
    from gradscope.vocab.budget import check_budget, parameter_count

    configs = [RunConfig(**spec.config) for spec in plan.specs]
    if not configs:
        return
    try:
        check_budget(max(configs, key=parameter_count), limit)
    except ConfigError as exc:
        raise ConfigError(f"invalid sweep, nothing was queued:\n{exc}") from None
