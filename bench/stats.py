"""Small numeric helpers for the benchmarks: medians, server-side windows, markdown tables."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    """The median, or 0.0 for no values."""
    return statistics.median(values) if values else 0.0


def max_in_window(times_ms: Sequence[int], window_ms: int = 1000) -> int:
    """The most events inside any sliding window of ``window_ms`` (half-open)."""
    ordered = sorted(times_ms)
    best = start = 0
    for end, t in enumerate(ordered):
        while ordered[start] <= t - window_ms:
            start += 1
        best = max(best, end - start + 1)
    return best


def per_second(times_ms: Sequence[int]) -> list[int]:
    """Events per whole second since the first event: bucket k is [k s, k+1 s)."""
    if not times_ms:
        return []
    first = min(times_ms)
    buckets = Counter((t - first) // 1000 for t in times_ms)
    return [buckets.get(k, 0) for k in range(max(buckets) + 1)]


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table; floats keep what the caller formatted."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    """PASS or FAIL."""
    return "PASS" if ok else "FAIL"
