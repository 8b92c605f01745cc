"""Rate-limited, retried API calls that have no side effects (the list calls).

Creates are not retried here: their retries depend on whether the job may exist, which only
the submitter knows. List calls are safe to repeat, so one wrapper serves them all, through
the same limiter and retry policy as the creates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from batchsub.client import CONNECT_FAILED, UNREADABLE
from batchsub.errors import RetryableError
from batchsub.limiter import RateLimiter
from batchsub.retry import RetryPolicy

T = TypeVar("T")
log = structlog.get_logger("batchsub.calls")
# A one-shot run gives up on an API it cannot reach, or whose job list it cannot read, after
# this many such failures of a call in a row, or when the next try would start more than
# GIVE_UP_AFTER seconds after the first: a connect is bounded too (the connect_timeout setting),
# so it says so within 15 s, whatever the number of manifests.
UNREACHABLE_ATTEMPTS = 4
GIVE_UP_AFTER = 10.0
_UNREACHABLE = frozenset({CONNECT_FAILED, UNREADABLE})


class SafeCaller:
    """Runs an idempotent call under the shared limiter, retrying transient failures."""

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

    async def call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
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
