"""Text from outside (file names, message headers, API answers) made safe to store and show.

PostgreSQL refuses NUL in text, no UTF-8 codec can encode a lone surrogate (what a JSON
``"\\ud800"`` escape or a non-UTF-8 file name decodes to, PEP 383), and a control character
in a log line, a report or a message header garbles what a person reads. ``printable``
escapes them rather than fail on them (a file name's undecodable bytes as ``caf\\xe9.json``);
``utf8`` keeps control characters and only makes the text valid UTF-8 (for text that is
already laid out, such as a console log line); ``safe_value`` turns any object into plain JSON
types, for a log line or a report row that must be written whatever it holds; ``clip`` bounds
a text; ``quoted`` shows a value in a message; ``describe_char`` names one character.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

# C0 and C1 controls, DEL, and the surrogate range (never valid alone in a str from UTF-8).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_SURROGATES = re.compile(r"[\ud800-\udfff]")
# U+DC80..U+DCFF: how os.fsdecode carries a file name's byte 0x80..0xFF that is not UTF-8.
_ESCAPED_BYTES = range(0xDC80, 0xDD00)
_MAX_DEPTH = 32  # containers deeper than this are shown as text (orjson stops at 254)
_MAX_NODES = 10_000  # values converted in one call: a self-containing list ends here
_INT64 = range(-(2**63), 2**64)  # what orjson writes as a number


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
    if code in _ESCAPED_BYTES:
        return f"\\x{code - 0xDC00:02x}"  # the byte the file name had
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def iso_utc(epoch: float, timespec: str = "milliseconds") -> str:
    """Epoch seconds as ISO-8601 UTC, e.g. ``2024-05-01T10:00:00.123Z``."""
    stamp = datetime.fromtimestamp(epoch, UTC).isoformat(timespec=timespec)
    return stamp.replace("+00:00", "Z")


def clip(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def printable(text: str, limit: int | None = None) -> str:
    """``text`` with control characters and lone surrogates escaped (``\\x00``, ``\\ud800``).

    A file name's undecodable byte shows as itself (``caf\\xe9.json``). Cut to ``limit``
    characters (ending in ``...``) when longer. The result can be stored in either ledger,
    encoded as UTF-8 and written on one line; unchanged when it already could (the usual case).
    """
    if not text.isascii() or _UNSAFE.search(text) is not None:
        text = _UNSAFE.sub(_escape, text)
    if limit is not None and len(text) > limit:
        text = text[: max(limit - 3, 0)] + "..."
    return text


def utf8(text: str) -> str:
    """``text`` as valid UTF-8, control characters kept: only lone surrogates are escaped."""
    if text.isascii() or _SURROGATES.search(text) is None:
        return text
    return _SURROGATES.sub(_escape, text)


def quoted(text: str) -> str:
    """``text`` as a JSON string, with ``\\u`` escapes for control characters and surrogates."""
    if _UNSAFE.search(text) is None:
        return orjson.dumps(text).decode()
    return json.dumps(text)  # ASCII only: every unsafe character becomes an escape


def describe_char(char: str) -> str:
    """``U+0000, a control character``: a code point and what kind of character it is."""
    kind = _KINDS.get(unicodedata.category(char), "a character")
    return f"U+{ord(char):04X}, {kind}"


def safe_value(value: object) -> Any:
    """``value`` as JSON types orjson always writes: str (valid UTF-8), bool, None, int64,
    float, list and dict with str keys; anything else as its text, or as what it is when
    even ``str()`` fails. Never raises."""
    return _Converter().convert(value, 0)


def safe_text(value: object) -> str:
    """``str(value)``, as valid UTF-8; a description of the object when ``str()`` fails."""
    try:
        text = str(value)
        if not isinstance(text, str):
            raise TypeError("__str__ returned a non-string")
    except Exception as exc:
        if isinstance(value, int) and not isinstance(value, bool):  # over 4,300 digits
            return f"an integer of {value.bit_length()} bits"
        return f"<{type(value).__qualname__} object; str() failed: {type(exc).__name__}>"
    return utf8(text)


class _Converter:
    def __init__(self) -> None:
        self.nodes = 0

    def convert(self, value: object, depth: int) -> Any:
        self.nodes += 1
        if value is None or isinstance(value, bool | float):
            return value
        if isinstance(value, str):
            return utf8(value)
        if isinstance(value, int):
            return int(value) if value in _INT64 else safe_text(value)
        if isinstance(value, bytes | bytearray | memoryview):
            return utf8(repr(bytes(value)))
        if depth >= _MAX_DEPTH or self.nodes > _MAX_NODES:
            return f"<{type(value).__qualname__}: nested too deep or too big to show>"
        if isinstance(value, Mapping):
            return self._mapping(value, depth)
        if isinstance(value, list | tuple | set | frozenset):
            return [self.convert(item, depth + 1) for item in list(value)]
        return safe_text(value)

    def _mapping(self, value: Mapping[Any, Any], depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        try:
            items = list(value.items())
        except Exception:
            return {"<mapping>": safe_text(value)}
        for key, item in items:
            shown = printable(key) if isinstance(key, str) else safe_text(key)
            out[shown] = self.convert(item, depth + 1)
        return out
