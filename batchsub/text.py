"""Text every output can hold: clipped to a bound, and valid UTF-8 whatever it came from.

A file name that is not UTF-8 reaches Python as a string with lone surrogates (PEP 383); the
ledger, orjson and a strict stream all refuse those. ``printable`` shows such a name with its
bytes escaped (``caf\\xe9.json``), and ``safe_value`` turns any object into plain JSON types
(for a log line or a report row that must be written whatever it holds).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

_MAX_DEPTH = 32  # containers deeper than this are shown as text (orjson stops at 254)
_MAX_NODES = 10_000  # values converted in one call: a self-containing list ends here
_INT64 = range(-(2**63), 2**64)  # what orjson writes as a number


def clip(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def printable(text: str) -> str:
    """``text`` as valid UTF-8: a file name's undecodable bytes as ``\\xNN``, other lone
    surrogates as ``\\udNNN``; unchanged when it is already valid (the usual case)."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        pass
    else:
        return text
    try:
        raw = text.encode("utf-8", "surrogateescape")  # the bytes the file name had
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def safe_value(value: object) -> Any:
    """``value`` as JSON types orjson always writes: str (printable), bool, None, int64,
    float, list and dict with str keys; anything else as its text, or as what it is when
    even ``str()`` fails. Never raises."""
    return _Converter().convert(value, 0)


def safe_text(value: object) -> str:
    """``str(value)``, printable; a description of the object when ``str()`` fails."""
    try:
        text = str(value)
        if not isinstance(text, str):
            raise TypeError("__str__ returned a non-string")
    except Exception as exc:
        if isinstance(value, int) and not isinstance(value, bool):  # over 4,300 digits
            return f"an integer of {value.bit_length()} bits"
        return f"<{type(value).__qualname__} object; str() failed: {type(exc).__name__}>"
    return printable(text)


class _Converter:
    def __init__(self) -> None:
        self.nodes = 0

    def convert(self, value: object, depth: int) -> Any:
        self.nodes += 1
        if value is None or isinstance(value, bool | float):
            return value
        if isinstance(value, str):
            return printable(value)
        if isinstance(value, int):
            return int(value) if value in _INT64 else safe_text(value)
        if isinstance(value, bytes | bytearray | memoryview):
            return printable(repr(bytes(value)))
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
