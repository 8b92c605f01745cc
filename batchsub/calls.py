"""Rate-limited, retried API calls that have no side effects (the list calls).

Creates are not retried here: their retries depend on whether the job may exist, which only
the submitter knows. List calls are safe to repeat, so one wrapper serves them all, through
the same limiter and retry policy as the creates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import structlog

from batchsub.client import CONNECT_FAILED
from batchsub.errors import RetryableError
from batchsub.limiter import RateLimiter
from batchsub.retry import RetryPolicy

T = TypeVar("T")
log = structlog.get_logger("batchsub.calls")
CONNECT_ATTEMPTS = 4  # list calls that found nobody listening before the run gives up


class SafeCaller:
    """Runs an idempotent call under the shared limiter, retrying transient failures."""

    def __init__(
        self,
        limiter: RateLimiter,
        policy: RetryPolicy,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        connect_attempts: int | None = CONNECT_ATTEMPTS,
    ) -> None:
        self._limiter = limiter
        self._policy = policy
        self._clock = clock
        self._sleep = sleep
        # None: keep trying as the retry policy allows (a daemon outlives a network outage).
        self._connect_attempts = connect_attempts

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
                limit = self._connect_attempts
                if exc.code == CONNECT_FAILED and limit is not None and failures >= limit:
                    raise  # a wrong endpoint or a network down: say so in seconds, not minutes
                if not self._policy.should_retry(failures, self._now() - started, delay):
                    raise
                log.info(
                    "call.retry", call=what, attempt=failures, delay=round(delay, 3), error=str(exc)
                )
                await self._sleep(delay)
