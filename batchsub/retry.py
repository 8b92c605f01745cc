"""When to retry a failed request and how long to wait first.

Exponential backoff with full jitter (spreads retries of many jobs apart), at least the
server's Retry-After, within a per-job attempt limit and deadline.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

_DELTA_SECONDS_RE = re.compile(r"\d+(?:\.\d+)?")  # RFC 9110 says digits; tolerate a fraction
_MAX_DOUBLINGS = 60  # 2**60 * base_delay is past any max_delay; avoids float overflow


@dataclass(frozen=True)
class RetryPolicy:
    """Limits and backoff for retrying one job; ``attempt`` counts from 1 (the first send)."""

    max_attempts: int = 10
    base_delay: float = 0.5
    max_delay: float = 30.0
    retry_after_cap: float = 120.0
    job_deadline: float = 900.0  # seconds a job may take in total, from its first attempt

    def __post_init__(self) -> None:
        for name in ("max_attempts", "base_delay", "max_delay", "retry_after_cap", "job_deadline"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"RetryPolicy.{name} must be a positive number, got {value!r}")
        if self.base_delay > self.max_delay:
            raise ValueError(
                f"RetryPolicy.base_delay ({self.base_delay}) must not exceed "
                f"max_delay ({self.max_delay})"
            )

    def delay(
        self,
        attempt: int,
        *,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based) before the next one.

        Full jitter: uniform(0, min(max_delay, base_delay * 2 ** (attempt - 1))); never less
        than the server's ``retry_after`` clamped to ``retry_after_cap``.
        """
        wait = (rng or random).uniform(0.0, self.ceiling(attempt))
        if retry_after is not None and retry_after > 0:
            wait = max(wait, min(retry_after, self.retry_after_cap))
        return wait

    def ceiling(self, attempt: int) -> float:
        """The longest backoff after failed attempt ``attempt``: base doubled, up to max."""
        if attempt < 1:
            raise ValueError(f"attempt counts from 1, got {attempt}")
        return min(self.max_delay, self.base_delay * 2.0 ** min(attempt - 1, _MAX_DOUBLINGS))

    def should_retry(self, attempt: int, elapsed: float, next_delay: float) -> bool:
        """Whether to try again after failed attempt ``attempt``, ``elapsed`` s into the job."""
        return attempt < self.max_attempts and elapsed + next_delay <= self.job_deadline


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds or an HTTP-date (RFC 9110).

    None when absent, negative or unreadable; a date in the past gives 0.0. A date without a
    zone, and a naive ``now``, are taken as UTC.
    """
    if value is None:
        return None
    text = value.strip()
    if _DELTA_SECONDS_RE.fullmatch(text):
        seconds = float(text)
        return seconds if math.isfinite(seconds) else None
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    reference = now or datetime.now(UTC)
    if reference.tzinfo is None:
        reference = reference.replace(tzinfo=UTC)
    return max(0.0, (when - reference).total_seconds())
