"""RunConfig fields as CLI options, generated from the pydantic model so they never drift.

Every field becomes `--kebab-case` taking text (pydantic validates and converts it); --help
shows the field's real type, range, description and default, all read from the model. Commands that
take grids (`sweep`) accept comma lists in the same options.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any

import typer

from gradscope.vocab.config import RunConfig

CONFIG_FIELDS = tuple(RunConfig.model_fields)


def _choices(name: str) -> tuple[str, ...] | None:
    annotation = RunConfig.model_fields[name].annotation
    if typing.get_origin(annotation) is typing.Literal:
        return tuple(str(c) for c in typing.get_args(annotation))
    return None


def config_metavar(name: str) -> str:
    """The field's real type as shown in --help: INTEGER, FLOAT, TEXT or the choices."""
    if choices := _choices(name):
        return "[" + "|".join(choices) + "]"
    annotation = RunConfig.model_fields[name].annotation
    kinds = {t for t in typing.get_args(annotation) or (annotation,) if t is not type(None)}
    if kinds == {int}:
        return "INTEGER"
    if kinds == {float}:
        return "FLOAT"
    return "TEXT"


def _bounds(name: str) -> str:
    """The field's numeric range from its pydantic constraints, e.g. "1..200", "> 0"."""
    lo = hi = None
    lo_incl = hi_incl = True
    for m in RunConfig.model_fields[name].metadata:
        for attr, incl in (("ge", True), ("gt", False)):
            if getattr(m, attr, None) is not None:
                lo, lo_incl = getattr(m, attr), incl
        for attr, incl in (("le", True), ("lt", False)):
            if getattr(m, attr, None) is not None:
                hi, hi_incl = getattr(m, attr), incl
    if lo is None and hi is None:
        return ""
    left = "" if lo is None else ("" if lo_incl else ">") + str(lo)
    right = "" if hi is None else ("" if hi_incl else "<") + str(hi)
    return f"range {left}..{right}"


def _field_help(name: str) -> str:
    """One line from the config model: its description, range and default."""
    info = RunConfig.model_fields[name]
    parts = [info.description or name.replace("_", " ")]
    if bounds := _bounds(name):
        parts.append(bounds)
    return "; ".join(parts) + f" (default: {info.default})"


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
                    metavar=config_metavar(name) + (",..." if list_values else ""),
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
