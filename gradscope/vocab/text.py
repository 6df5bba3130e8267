"""Text that came from a database or a user, made safe to show in a terminal or a page.

Control characters (C0 such as ESC, DEL, C1 such as U+009B CSI) can move the cursor, clear the
screen or retitle the window; bidirectional overrides can make text read differently from what
it holds. They are escaped as `\\x1b`, `\\u202e`, ... so the text is shown, never obeyed.
"""

from __future__ import annotations

import re

# C0 (except nothing: tabs and newlines are escaped too), DEL, C1, and the bidi controls.
UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def has_unsafe_chars(text: str) -> bool:
    """True when `text` holds a character that a terminal or a renderer would obey."""
    return UNSAFE_CHARS.search(text) is not None


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """`text` with every unsafe character escaped (see UNSAFE_CHARS)."""
    return UNSAFE_CHARS.sub(_escape, text)
