"""A user's own model recorded through the `gradscope` API: the words and limits its runs share.

Such a run is a normal `runs` row with arch "custom". Its config is not a RunConfig but
{"user": <the user's dict>, "model": <a summary of the watched model>}; this module says what
that shape may hold, so the API that writes it and the import that checks it agree.
Torch-free: the database floor and the dashboard read it too.
"""

from __future__ import annotations

import json
from typing import Any

from gradscope.vocab.stored_values import MAX_CONFIG_DEPTH, depth_problem

# Keys of a built-in run's config, shown as run columns, that a user's dict may reuse with
# another meaning (a user's "depth" may count blocks; the run's counts recorded weights).
_BUILT_IN_KEYS = frozenset({"arch", "dataset", "depth", "width"})
CUSTOM_ARCH = "custom"
CUSTOM_DATASET = "custom"
# Activations a custom layer may be followed by (gradscope.api.insight.ACTIVATION_MODULES);
# "none" when gradscope cannot tell.
CUSTOM_ACTIVATIONS = ("none", "sigmoid", "relu", "leaky_relu", "elu", "tanh", "gelu")
MAX_USER_CONFIG_CHARS = 8_000  # the user's dict as JSON
MAX_MODEL_SUMMARY_CHARS = 10_000  # the model summary's layer list is cut to stay under this
MAX_KIND_CHARS = 64
MODEL_KEYS = ("layers", "layers_omitted", "parameters", "torch", "device")


class CustomConfigError(ValueError):
    """A user's config that cannot be stored (not JSON-able, too large)."""


def user_config(config: dict[str, Any] | None) -> dict[str, Any]:
    """The user's dict as stored: JSON-able with string keys and finite numbers, at most
    MAX_USER_CONFIG_CHARS characters as JSON and MAX_CONFIG_DEPTH levels deep (what import
    accepts, and what pages can show). Raises CustomConfigError saying what is wrong."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise CustomConfigError(f"config must be a dict, got {type(config).__name__}")
    deep = depth_problem(config, MAX_CONFIG_DEPTH)
    if deep:
        raise CustomConfigError(f"{deep}; flatten it (at most {MAX_CONFIG_DEPTH} levels)")
    try:
        text = json.dumps(config, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise CustomConfigError(
            f"config must be JSON-able (str keys, finite numbers): {exc}"
        ) from None
    if len(text) > MAX_USER_CONFIG_CHARS:
        raise CustomConfigError(
            f"config is {len(text):,} characters as JSON; at most {MAX_USER_CONFIG_CHARS:,}"
        )
    return json.loads(text)


def model_summary(layers: list[str], parameters: int, torch: str, device: str) -> dict[str, Any]:
    """The model part of a custom run's config; the layer list ("path: Kind shape") is cut so
    the summary stays under MAX_MODEL_SUMMARY_CHARS (every layer is in run_layers anyway)."""
    kept: list[str] = []
    used = 0
    for text in layers:
        used += len(json.dumps(text)) + 2
        if used > MAX_MODEL_SUMMARY_CHARS:
            break
        kept.append(text)
    return {
        "layers": kept,
        "layers_omitted": len(layers) - len(kept),
        "parameters": parameters,
        "torch": torch,
        "device": device,
    }


def is_custom(config: dict[str, Any]) -> bool:
    return set(config) == {"user", "model"}


def custom_config_problem(config: dict[str, Any]) -> str | None:
    """Why a stored config is not a valid custom run's config, or None."""
    if not is_custom(config):
        return f"a custom run's config has the keys user and model, not {sorted(config)}"
    user, model = config["user"], config["model"]
    if not isinstance(user, dict):
        return "config.user must be an object"
    deep = depth_problem(user, MAX_CONFIG_DEPTH)
    if deep:
        return f"config.user: {deep}"
    if len(json.dumps(user)) > MAX_USER_CONFIG_CHARS:
        return f"config.user is longer than {MAX_USER_CONFIG_CHARS:,} characters"
    if not isinstance(model, dict):
        return "config.model must be an object"
    if not model:
        return None  # watch() was never called: no model to describe
    if set(model) - {"facts"} != set(MODEL_KEYS):
        return f"config.model has the keys {', '.join(MODEL_KEYS)}, not {sorted(model)}"
    if not isinstance(model.get("facts", {}), dict) or len(json.dumps(model.get("facts"))) > 20_000:
        return "config.model.facts must be an object of at most 20,000 characters"
    if not isinstance(model["layers"], list) or not all(
        isinstance(x, str) for x in model["layers"]
    ):
        return "config.model.layers must be a list of text"
    for key in ("layers_omitted", "parameters"):
        value = model[key]
        if type(value) is not int or value < 0:
            return f"config.model.{key} must be a non-negative integer"
    for key in ("torch", "device"):
        if not isinstance(model[key], str) or len(model[key]) > 200:
            return f"config.model.{key} must be short text"
    return None


def display_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config as one flat dict for tables: a custom run's user keys as they are, plus its
    model summary in a few fields (so it lines up beside a built-in run's RunConfig). A user's
    key that names a run column ("depth", "width", "arch", "dataset") is shown as
    "depth (your config)": the user's "depth": 8 is not the run's depth, which counts the
    weights recorded ("model layers"), so the Runs table and Compare agree on the model's size."""
    if not is_custom(config):
        return config
    model = config.get("model") or {}
    flat: dict[str, Any] = {
        (f"{k} (your config)" if k in _BUILT_IN_KEYS else k): v
        for k, v in (config.get("user") or {}).items()
    }
    if model:
        n_layers = len(model.get("layers", [])) + int(model.get("layers_omitted", 0))
        flat["model layers"] = n_layers
        flat["model parameters"] = model.get("parameters")
        flat["model device"] = model.get("device")
    return flat


def run_progress(
    arch: str, status: str, epochs_done: int, epochs_total: int
) -> tuple[float | None, str]:
    """A run's share of its epochs done (None where it is not known) and its epochs as text
    ("3/10", "3/?"): the one place the Runs table, the sidebar's queue and `gradscope runs`
    read progress from.

    A custom run (a user's own loop) declares no length: its stored total is the epochs it
    logged, known only once its loop ended (completed, or diverged at its end); before that,
    or if it failed, it reads "3/?" with no share. A run that stopped without completing
    never reads as 100%: a failed run that had written its every epoch has no share either
    (a running one that has, finishing, does)."""
    ended = status in ("completed", "diverged")  # a custom run is marked diverged at its end
    if arch == CUSTOM_ARCH and not ended:
        return None, f"{epochs_done}/?"
    text = f"{epochs_done}/{epochs_total}"
    share = min(1.0, max(0.0, epochs_done / epochs_total)) if epochs_total > 0 else 0.0
    stopped = status in ("failed", "interrupted", "cancelled")  # stopped before it completed
    return (None if share >= 1.0 and stopped else share), text
