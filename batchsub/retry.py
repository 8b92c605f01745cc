"""Retrying, in one place: when to retry and how long to wait, how many retries the run may
spend, and the caller that retries idempotent calls.

``RetryPolicy``: exponential backoff with full jitter (spreads retries of many jobs apart), at
least the server's Retry-After, within a per-job attempt limit and deadline. ``RetryBudget``:
a retry quota in the style of the AWS SDKs (retries spend tokens, successes refund them), so
a failing API is not hammered. ``RetryingCaller``: an idempotent call under the shared
limiter, retried by the policy, given up on quickly when the API cannot be reached.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import TypeVar

import structlog

from batchsub.errors import CONNECT_FAILED, UNREADABLE, RetryableError
from batchsub.limiter import RateLimiter

_T = TypeVar("_T")
log = structlog.get_logger("batchsub.calls")

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


class RetryBudget:
    """A retry quota shared by every job (as the AWS SDKs' retry quota).

    Each retry spends ``retry_cost`` tokens (``timeout_cost`` after a timeout), each success
    refunds ``success_refund``. When the bucket is empty ``try_spend`` refuses: the caller waits
    its longest backoff instead of retrying soon, and says why.
    """

    def __init__(
        self,
        capacity: int = 500,
        retry_cost: int = 5,
        timeout_cost: int = 10,
        success_refund: int = 1,
    ) -> None:
        if min(capacity, retry_cost, timeout_cost, success_refund) <= 0:
            raise ValueError(
                "capacity, retry_cost, timeout_cost and success_refund must all be > 0, got "
                f"{capacity}, {retry_cost}, {timeout_cost}, {success_refund}"
            )
        self._capacity = capacity
        self._retry_cost = retry_cost
        self._timeout_cost = timeout_cost
        self._success_refund = success_refund
        self._available = capacity
        self._exhausted = 0

    @property
    def available(self) -> int:
        """Tokens left."""
        return self._available

    @property
    def exhausted(self) -> int:
        """How many retries were refused for want of tokens."""
        return self._exhausted

    def try_spend(self, *, timeout: bool = False) -> bool:
        """Take the cost of one retry; False (and nothing taken) when the budget cannot pay."""
        cost = self._timeout_cost if timeout else self._retry_cost
        if cost > self._available:
            self._exhausted += 1
            return False
        self._available -= cost
        return True

    def refund(self) -> None:
        """Give back ``success_refund`` tokens after a success, up to the capacity."""
        self._available = min(self._capacity, self._available + self._success_refund)


# A one-shot run gives up on an API it cannot reach, or whose job list it cannot read, after
# this many such failures of a call in a row, or when the next try would start more than
# GIVE_UP_AFTER seconds after the first: a connect is bounded too (the connect_timeout setting),
# so it says so within 15 s, whatever the number of manifests.
UNREACHABLE_ATTEMPTS = 4
GIVE_UP_AFTER = 10.0
_UNREACHABLE = frozenset({CONNECT_FAILED, UNREADABLE})


class RetryingCaller:
    """Runs an idempotent call (a list, a status read) under the shared limiter, retrying it.

    Creates, runs and stops are not retried here: whether they may be sent again depends on
    what their answer says was done, which only the submitter and the starter know. Calls
    without side effects are safe to repeat, so one caller serves them all, through the same
    limiter and retry policy as the creates.
    """

    def __init__(
        self,
        limiter: RateLimiter,
        policy: RetryPolicy,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        give_up_after: float | None = GIVE_UP_AFTER,
    ) -> None:
        self._limiter = limiter
        self._policy = policy
        self._clock = clock
        self._sleep = sleep
        # None: keep trying as the retry policy allows (a daemon outlives a network outage).
        self._give_up_after = give_up_after

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    async def call(self, what: str, fn: Callable[[], Awaitable[_T]]) -> _T:
        """Call ``fn`` until it succeeds; re-raise when the policy says stop."""
        started = self._now()
        failures = 0
        while True:
            await self._limiter.acquire()
            try:
                return await fn()
            except RetryableError as exc:
                if exc.status == 429:
                    # Throttling is not a failure of the call: slow down and go again.
                    self._limiter.on_throttled(str(exc), exc.defer)
                    if self._now() - started > self._policy.job_deadline:
                        raise
                    continue
                failures += 1
                delay = self._policy.delay(failures, retry_after=exc.defer)
                elapsed = self._now() - started
                if self._gives_up(exc, failures, elapsed + delay):
                    raise  # a wrong endpoint or a network down: say so in seconds, not minutes
                if not self._policy.should_retry(failures, elapsed, delay):
                    raise
                # An outage is logged once, by the client (api.unreachable), not at every try.
                level = logging.DEBUG if exc.code in _UNREACHABLE else logging.INFO
                log.log(
                    level,
                    "call.retry",
                    call=what,
                    attempt=failures,
                    delay=round(delay, 3),
                    error=str(exc),
                )
                await self._sleep(delay)

    def _gives_up(self, exc: RetryableError, failures: int, next_try_at: float) -> bool:
        if self._give_up_after is None or exc.code not in _UNREACHABLE:
            return False
        return failures >= UNREACHABLE_ATTEMPTS or next_try_at > self._give_up_after
