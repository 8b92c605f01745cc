"""Text every output can hold: clipped to a bound, and valid UTF-8 whatever it came from."""

from __future__ import annotations


def clip(text: str, limit: int) -> str:
    """``text``, or its first ``limit`` characters and how long it was."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"
