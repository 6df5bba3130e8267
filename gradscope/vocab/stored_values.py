"""The one set of rules for every value gradscope stores: names, notes, tags, the error texts it
writes itself, a custom run's config, and the ranges of recorded metrics.

Storing (CLI, API, dashboard, lifecycle) cleans or refuses a value with these functions, and
import (gradscope.db.share.validate) accepts exactly what they would have stored: a value is
importable when cleaning it gives it back unchanged. So a file gradscope wrote always imports,
and whatever an import lets in, the pages can show (at most MAX_TAGS_PER_RUN tags, configs no
deeper than MAX_CONFIG_DEPTH, one Unicode form per tag).

Torch- and SQL-free: the database floor, the API and the dashboard all read it.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Iterable
from typing import Any

from gradscope.vocab.fields import (
    EPOCH_FIELDS,
    FINAL_COLUMNS,
    LAYER_STAT_FIELDS,
    MAX_NAME_CHARS,
    MAX_TAG_CHARS,
)
from gradscope.vocab.text import UNSAFE_CHARS, has_unsafe_chars, printable

MAX_NOTES_CHARS = 10_000
MAX_TAGS_PER_RUN = 50  # the dashboard's tag editor holds at most this many
MAX_ERROR_CHARS = 10_000  # a run's error (a traceback's last line, "worker lost", ...)
MAX_CONFIG_DEPTH = 20  # nesting of a custom run's config: pages and JSON writers recurse
# Characters multi-line texts (notes, an error) may hold besides printable ones.
LINE_BREAKS = "\n\r\t"
# Invisible characters: a name or tag made of (or padded with) them looks like another one or
# like nothing. Format characters (zero-width space/joiner, BOM, soft hyphen, ...), line and
# paragraph separators, lone surrogates; plus the blank letters fonts draw as nothing.
_INVISIBLE_CATEGORIES = frozenset({"Cf", "Zl", "Zp", "Cs"})
_BLANK_LETTERS = frozenset("\u115f\u1160\u3164\uffa0\u2800")

# Values with a fixed range: accuracies and fractions lie in [0, 1] (NaN stays allowed: a
# diverged run's unknowns); seconds are finite and >= 0.
UNIT_INTERVAL = tuple(
    c for c in (*EPOCH_FIELDS, *FINAL_COLUMNS, *LAYER_STAT_FIELDS) if c.endswith(("_acc", "_frac"))
)
NON_NEGATIVE_FINITE = ("seconds",)


class StoredValueError(ValueError):
    """A value that cannot be stored as given; the message says why."""


def _invisible(char: str) -> bool:
    if char in _BLANK_LETTERS:
        return True
    if char.isspace() and char != " ":
        return True
    return unicodedata.category(char) in _INVISIBLE_CATEGORIES


def shown(text: str) -> str:
    """A text for a message: control and invisible characters escaped (`\\u200d`)."""
    return "".join(f"\\u{ord(c):04x}" if _invisible(c) else c for c in printable(text))


def _line_problem(what: str, text: str) -> str | None:
    """Why a one-line text (a name, a tag) cannot be stored, or None."""
    if has_unsafe_chars(text):
        return f'{what}: must not contain control characters (C0, DEL, C1 or bidi): "{shown(text)}"'
    bad = next((c for c in text if _invisible(c)), None)
    if bad is not None:
        return f'{what} "{shown(text)}" holds an invisible character (U+{ord(bad):04X})'
    return None


def _key(text: str) -> str:
    """The form a one-line text is stored in: NFC (one form for "café"), trimmed."""
    return unicodedata.normalize("NFC", text).strip()


def clean_name(name: str | None) -> str | None:
    """A run's name as stored: NFC, trimmed; None or blank means no name."""
    if name is None:
        return None
    if not isinstance(name, str):
        raise StoredValueError(f"a name must be text, not {type(name).__name__}")
    name = _key(name)
    if not name:
        return None
    problem = _line_problem("name", name)
    if problem:
        raise StoredValueError(problem)
    if len(name) > MAX_NAME_CHARS:
        raise StoredValueError(f"name is {len(name)} characters; the limit is {MAX_NAME_CHARS}")
    return name


def tag_key(tag: str) -> str:
    """How a tag given to remove is matched against stored ones (NFC, trimmed)."""
    return _key(tag)


def clean_tag(tag: str) -> str:
    """One tag as stored: NFC, trimmed, non-empty, visible, without commas (lists of tags
    are typed comma-separated), at most MAX_TAG_CHARS."""
    if not isinstance(tag, str):
        raise StoredValueError(f"a tag must be text, not {type(tag).__name__}")
    tag = _key(tag)
    if not tag:
        raise StoredValueError("a tag cannot be empty")
    problem = _line_problem("tag", tag)
    if problem:
        raise StoredValueError(problem)
    if "," in tag:
        raise StoredValueError(f"tag {tag!r} holds a comma; give tags one by one")
    if len(tag) > MAX_TAG_CHARS:
        raise StoredValueError(
            f"tag {tag[:20]!r}... is {len(tag)} characters; the limit is {MAX_TAG_CHARS}"
        )
    return tag


def clean_tags(tags: Iterable[str]) -> list[str]:
    """A run's whole tag list: each tag cleaned, duplicates (after cleaning) dropped, at most
    MAX_TAGS_PER_RUN."""
    cleaned = list(dict.fromkeys(clean_tag(t) for t in tags))
    if len(cleaned) > MAX_TAGS_PER_RUN:
        raise StoredValueError(
            f"a run carries at most {MAX_TAGS_PER_RUN} tags ({len(cleaned)} given)"
        )
    return cleaned


def _multiline_problem(what: str, text: str) -> str | None:
    checked = text.translate({ord(c): None for c in LINE_BREAKS})
    if has_unsafe_chars(checked):
        bad = next(c for c in checked if has_unsafe_chars(c))
        return (
            f"{what}: must not contain control characters ({printable(bad)}); only line breaks "
            "and tabs are allowed"
        )
    return None


def clean_notes(notes: str | None) -> str | None:
    """Notes as typed (line breaks, \\r included, and tabs allowed); None or blank clears."""
    if notes is None or not notes.strip():
        return None
    problem = _multiline_problem("notes", notes)
    if problem:
        raise StoredValueError(problem)
    if len(notes) > MAX_NOTES_CHARS:
        raise StoredValueError(f"notes are {len(notes)} characters; the limit is {MAX_NOTES_CHARS}")
    return notes


def _escape_unsafe(match: re.Match[str]) -> str:
    char = match.group()
    return char if char in LINE_BREAKS else printable(char)


def stored_text(text: str | None, limit: int = MAX_ERROR_CHARS) -> str | None:
    """A text gradscope writes itself from what it was handed (a run's error: an exception's
    message may hold ESC, bidi controls or NUL): control characters other than line breaks
    and tabs escaped (`\\x1b`, `\\x00`: the same on SQLite and PostgreSQL, which refuses NUL
    in text), cut to `limit`. Always something `text_problem` accepts."""
    if text is None:
        return None
    return UNSAFE_CHARS.sub(_escape_unsafe, text)[:limit] or None


def text_problem(column: str, text: str, multiline: bool) -> str | None:
    """Why a stored text (any text column) is not what storing would have written, or None."""
    if multiline:
        return _multiline_problem(column, text)
    if has_unsafe_chars(text):
        bad = next(c for c in text if has_unsafe_chars(c))
        return f"{column} contains control characters ({printable(bad)})"
    return None


def name_problem(name: str | None) -> str | None:
    """Why a stored run name is not what clean_name stores, or None."""
    if name is None:
        return None
    try:
        cleaned = clean_name(name)
    except StoredValueError as exc:
        return str(exc)
    if cleaned != name:
        return f'name "{shown(name)}" is not trimmed and NFC-normalised as gradscope stores'
    return None


def tag_problem(tag: str) -> str | None:
    """Why a stored tag is not what clean_tag stores, or None."""
    try:
        cleaned = clean_tag(tag)
    except StoredValueError as exc:
        return str(exc)
    if cleaned != tag:
        return f'tag "{shown(tag)}" is not trimmed and NFC-normalised as gradscope stores'
    return None


def depth_problem(value: Any, limit: int = MAX_CONFIG_DEPTH) -> str | None:
    """Why a JSON-like value nests deeper than `limit` levels, or None. Iterative: a
    3,000-level value gives this message, not a RecursionError."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            if depth + 1 > limit:
                return f"config nests more than {limit} levels deep"
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return None


def metric_problem(column: str, value: float | None) -> str | None:
    """Why a recorded number is outside its column's range, or None (None and NaN are
    allowed: a diverged run's unknowns)."""
    if value is None:
        return None
    if column in UNIT_INTERVAL and not math.isnan(value) and not 0.0 <= value <= 1.0:
        hint = " (a fraction: divide a percentage by 100)" if 1.0 < value <= 100.0 else ""
        return f"{column} is {value!r}; it must lie in [0, 1]{hint}"
    if column in NON_NEGATIVE_FINITE and not (math.isfinite(value) and value >= 0.0):
        return f"{column} is {value!r}; it must be a finite number >= 0"
    return None


def check_metrics(values: dict[str, Any]) -> None:
    """Raise StoredValueError for the first value outside its column's range."""
    for column, value in values.items():
        problem = metric_problem(column, value)
        if problem:
            raise StoredValueError(problem)
