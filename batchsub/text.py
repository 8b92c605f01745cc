"""Text from outside (message headers, API answers, file names) made safe to store and show.

PostgreSQL refuses NUL in text, no UTF-8 codec can encode a lone surrogate (what a JSON
``"\\ud800"`` escape or a non-UTF-8 file name decodes to), and a control character in a log
line, a report or a message header garbles what a person reads. ``printable`` escapes them
rather than fail on them; ``quoted`` shows a value in a message, ``describe_char`` names one
character.
"""

from __future__ import annotations

import json
import re
import unicodedata

import orjson

# C0 and C1 controls, DEL, and the surrogate range (never valid alone in a str from UTF-8).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")

_KINDS = {
    "Cc": "a control character",
    "Cs": "a lone surrogate, not valid Unicode text",
    "Cf": "an invisible format character",
    "Co": "a private-use character",
    "Cn": "an unassigned code point",
    "Zl": "a line separator",
    "Zp": "a paragraph separator",
    "Zs": "a space other than the ASCII space",
}


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with control characters and lone surrogates escaped (``\\x00``, ``\\ud800``).

    Cut to ``limit`` characters (ending in ``...``) when longer. The result can be stored in
    either ledger, encoded as UTF-8 and written on one line.
    """
    if _UNSAFE.search(text) is not None:
        text = _UNSAFE.sub(_escape, text)
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 3, 0)] + "..."
    return text


def quoted(text: str) -> str:
    """``text`` as a JSON string, with ``\\u`` escapes for control characters and surrogates."""
    if _UNSAFE.search(text) is None:
        return orjson.dumps(text).decode()
    return json.dumps(text)  # ASCII only: every unsafe character becomes an escape


def describe_char(char: str) -> str:
    """``U+0000, a control character``: a code point and what kind of character it is."""
    kind = _KINDS.get(unicodedata.category(char), "a character")
    return f"U+{ord(char):04X}, {kind}"
