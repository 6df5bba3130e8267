"""How runs are named for people when several are shown together (a chart's legend, a table at
80 columns): by what tells them apart, not by what they share. Pure; torch-free.

A name a person gave is kept. A sweep's generated name (`"<sweep>: arch=relu depth=10 seed=2"`,
gradscope.vocab.sweep.run_name) and no name at all both give way to the settings that differ
between the runs shown, in the sweep's own `field=value` words: 36 runs of one sweep read
"arch=relu depth=10 seed=2" instead of 36 names that all begin "depth sweep: ...". A short id
is added only where two labels would otherwise be equal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from gradscope.vocab.custom import display_config
from gradscope.vocab.sweep import ELLIPSIS

# Settings never used to tell runs apart: the name is the label's other source, and a custom
# run's model summary repeats what its own settings say.
_NOT_SETTINGS = ("name", "model parameters", "model device", "model layers")


def generated_name(name: str | None, sweep_name: str | None) -> bool:
    """Whether `name` is the one a sweep gave its run (`<sweep name>: <settings>`, the sweep's
    name possibly shortened with an ellipsis), not one a person typed."""
    if not name or not sweep_name:
        return False
    if name.startswith(f"{sweep_name}: ") or name == sweep_name:
        return True
    head, sep, _ = name.partition(f"{ELLIPSIS}: ")
    return bool(sep) and sweep_name.startswith(head)


def _text(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value, default=str)


def differing_settings(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The settings whose values are not the same in every config, in first-seen order."""
    flat = [display_config(dict(cfg)) for cfg in configs]
    fields = list(dict.fromkeys(k for cfg in flat for k in cfg if k not in _NOT_SETTINGS))
    return [f for f in fields if len({_text(cfg.get(f)) for cfg in flat}) > 1]


def settings_text(config: Mapping[str, Any], fields: Sequence[str]) -> str:
    """`field=value` for each of `fields` ("arch=relu depth=10"), as sweeps name their runs."""
    flat = display_config(dict(config))
    return " ".join(f"{f}={_text(flat.get(f))}" for f in fields)


def short_labels(
    ids: Sequence[str],
    names: Sequence[str | None],
    sweep_names: Sequence[str | None],
    configs: Sequence[Mapping[str, Any]],
) -> dict[str, str]:
    """A unique, short label per run id (see the module docstring)."""
    fields = differing_settings(configs)
    base = []
    for name, sweep, cfg in zip(names, sweep_names, configs, strict=True):
        own = name if isinstance(name, str) and name and not generated_name(name, sweep) else None
        if own is None and fields:
            own = settings_text(cfg, fields)
        if own is None:  # alone, or every setting shared: what the run is
            own = f"{cfg.get('arch', 'run')} d{cfg.get('depth', '?')} s{cfg.get('seed', '?')}"
            own = name if isinstance(name, str) and name else own
        base.append(own)
    repeated = {b for b in base if base.count(b) > 1}
    labels = base
    for width in (4, 8, 36):
        labels = [
            f"{b} · {i[:width]}" if b in repeated else b for b, i in zip(base, ids, strict=True)
        ]
        if len(set(labels)) == len(labels):
            break
    return dict(zip(ids, labels, strict=True))
