"""RunConfig fields as CLI options, generated from the pydantic model so they never drift.

Every field becomes `--kebab-case` taking text; pydantic validates and converts it. Commands that
take grids (`sweep`) accept comma lists in the same options.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

from vocab.config import RunConfig

CONFIG_FIELDS = tuple(RunConfig.model_fields)


def _field_help(name: str) -> str:
    info = RunConfig.model_fields[name]
    default = info.default
    parts = [info.description or name.replace("_", " ")]
    annotation = info.annotation
    choices = getattr(annotation, "__args__", None)
    if choices and all(isinstance(c, str) for c in choices):
        parts.append(f"one of: {', '.join(choices)}")
    parts.append(f"(default: {default})")
    return "; ".join(parts)


def config_parameters(list_values: bool = False) -> list[inspect.Parameter]:
    """One keyword parameter per RunConfig field, typed as optional text for Typer."""
    suffix = " (comma list for a grid)" if list_values else ""
    return [
        inspect.Parameter(
            name,
            inspect.Parameter.KEYWORD_ONLY,
            default=None,
            annotation=Annotated[
                str | None,
                typer.Option(
                    "--" + name.replace("_", "-"),
                    help=_field_help(name) + suffix,
                    rich_help_panel="Run configuration",
                    show_default=False,
                ),
            ],
        )
        for name in CONFIG_FIELDS
    ]


def with_config_options(list_values: bool = False) -> Callable[[Callable], Callable]:
    """Decorate a command taking `config_values: dict[str, str]` (plus its own options): the
    command gets one option per RunConfig field; the values given are passed as that dict."""

    def decorate(func: Callable) -> Callable:
        hints = typing.get_type_hints(func, include_extras=True)
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in inspect.signature(func).parameters.values()
            if p.name != "config_values"
        ]

        @functools.wraps(func)
        def wrapper(**kwargs: Any) -> Any:
            values = {k: kwargs.pop(k) for k in CONFIG_FIELDS if kwargs.get(k) is not None}
            for k in CONFIG_FIELDS:
                kwargs.pop(k, None)
            return func(config_values=values, **kwargs)

        params = own + config_parameters(list_values)
        params.sort(key=lambda p: p.kind)  # positional arguments before keyword-only ones
        wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        return wrapper

    return decorate
