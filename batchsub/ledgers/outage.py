"""Ledger outages are weather, not death: wait, retry with backoff, say so once, carry on.

A ledger runs each statement through ``Outage.run``. While the ledger answers, that is one
``await``. When a statement fails with ``LedgerUnavailable`` (connection refused or reset, a
timeout, the server restarting, a full disk), the outage begins: ``ledger.unavailable`` is
logged once, the health hook hears the reason, and one caller at a time (the probe) tries its
own statement again after a backoff with jitter, while the others wait for it. The first
statement that gets an answer ends the outage (``ledger.recovered``, with how long it lasted)
and the waiting calls go on. A long outage is logged again every ``remind_every`` seconds.

Limits: ``limit`` seconds of one outage before every call fails with one line saying how long
the ledger was unreachable (a one-shot run ends; None: a daemon waits for as long as it takes);
``startup_limit`` the same for opening the ledger; 0 does not wait at all.

After ``stop_waiting()`` (the run is stopping), calls that would start new work (look a job up,
claim it) give up waiting at once; outcome writes keep waiting, since an answer the API already
gave must reach the ledger. ``close()`` makes every waiting call give up.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from batchsub.errors import LedgerError, LedgerUnavailable

log = structlog.get_logger("batchsub.ledger")

_T = TypeVar("_T")

FIRST_DELAY = 0.25  # seconds before the first retry; doubled after each failure
MAX_DELAY = 2.0  # cap: a restarted server is noticed within about two seconds
REMIND_EVERY = 30.0  # seconds between reminders while an outage lasts


@dataclass(slots=True)
class _Down:
    """One outage: since when, the latest error, how many tries failed."""

    since: float
    error: LedgerUnavailable
    noted: float  # when it was last logged
    failures: int = 1
    probing: bool = False  # a caller is trying its statement again


class Outage:
    """The availability of one ledger, shared by every call to it."""

    def __init__(
        self,
        *,
        limit: float | None = 0.0,
        startup_limit: float | None = 0.0,
        on_change: Callable[[str | None], None] | None = None,
        first_delay: float = FIRST_DELAY,
        max_delay: float = MAX_DELAY,
        remind_every: float = REMIND_EVERY,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._limit = limit
        self._startup_limit = startup_limit
        self._on_change = on_change
        self._first_delay = first_delay
        self._max_delay = max_delay
        self._remind_every = remind_every
        self._clock = clock
        self._rng = rng or random.Random()
        self._down: _Down | None = None
        self._final: LedgerError | None = None  # the limit passed: every call fails with it
        self._abandon_new_work = False
        self._closed = False
        self._changed = asyncio.Event()  # replaced, after being set, at each change

    @property
    def problem(self) -> str | None:
        """Why the ledger is unavailable now, or None while it answers."""
        return self._down.error.reason if self._down is not None else None

    def stop_waiting(self) -> None:
        """The run is stopping: calls that would start new work stop waiting for the ledger."""
        self._abandon_new_work = True
        self._signal()

    def close(self) -> None:
        """The ledger is closing: every call still waiting gives up."""
        self._closed = True
        self._signal()

    def reopen(self) -> None:
        """The ledger is being opened (again): calls wait through outages once more."""
        self._closed = False

    async def ready(self) -> None:
        """Return once the ledger answers again, or once waiting is pointless (stopped, closed)."""
        while self._down is not None and self._final is None:
            if self._closed or self._abandon_new_work:
                return
            await self._changed.wait()

    async def run(
        self, attempt: Callable[[], Awaitable[_T]], *, new_work: bool = True, startup: bool = False
    ) -> _T:
        """``await attempt()``, again and again through an outage, until it gets an answer.

        ``attempt`` makes a fresh awaitable per try. ``new_work``: give up at ``stop_waiting``.
        ``startup``: the ledger is being opened (``startup_limit`` applies).
        """
        if self._down is None and self._final is None:
            try:
                return await attempt()
            except LedgerUnavailable as exc:
                self.failed(exc, startup=startup)
        while True:
            self._check(new_work)
            down = self._down
            if down is None:  # it came back while this call waited
                try:
                    return await attempt()
                except LedgerUnavailable as exc:
                    self.failed(exc, startup=startup)
                    continue
            if down.probing:
                await self._changed.wait()
                continue
            down.probing = True
            try:
                await self.pause(self.delay(), new_work=new_work)
                self._check(new_work)
                try:
                    result = await attempt()
                except LedgerUnavailable as exc:
                    self.failed(exc, startup=startup)
                    continue
                except Exception:
                    self.recovered()  # it answered, if only to refuse the statement
                    raise
                self.recovered()
                return result
            finally:
                down.probing = False
                self._signal()

    def failed(self, exc: LedgerUnavailable, *, startup: bool = False) -> None:
        """Count one failed try: begin the outage, or log a reminder; raise past the limit."""
        limit = self._startup_limit if startup else self._limit
        if limit == 0 or self._final is not None:
            raise self._final or exc
        now = self._clock()
        down = self._down
        if down is None:
            down = self._down = _Down(since=now, error=exc, noted=now)
            _say("ledger.unavailable", ledger=exc.ledger, error=exc.reason)
            if self._on_change is not None:
                self._on_change(exc.reason)
        else:
            down.error = exc
            down.failures += 1
            if now - down.noted >= self._remind_every:
                down.noted = now
                _say(
                    "ledger.still_unavailable",
                    ledger=exc.ledger,
                    error=exc.reason,
                    for_s=round(now - down.since),
                )
        if limit is not None and now - down.since >= limit:
            self._final = LedgerUnavailable(
                exc.ledger,
                exc.reason,
                condition=exc.condition,
                message=f"ledger {exc.ledger} {exc.condition} for {now - down.since:.0f} s: "
                f"{exc.reason}",
            )
            self._signal()
            raise self._final

    def recovered(self) -> None:
        """A statement got an answer: end the outage, if there is one."""
        down, self._down = self._down, None
        if down is None:
            return
        _say(
            "ledger.recovered",
            ledger=down.error.ledger,
            down_s=round(self._clock() - down.since, 1),
            failures=down.failures,
        )
        if self._on_change is not None:
            self._on_change(None)
        self._signal()

    def delay(self) -> float:
        """The backoff before the next try: doubling from ``first_delay``, capped, jittered."""
        failures = self._down.failures if self._down is not None else 1
        ceiling = min(self._max_delay, self._first_delay * 2.0 ** min(failures - 1, 30))
        return ceiling * self._rng.uniform(0.5, 1.0)

    async def pause(self, delay: float, *, new_work: bool) -> None:
        """Sleep ``delay`` s; cut short by ``close()``, or by ``stop_waiting()`` for new work."""
        deadline = self._clock() + delay
        while (left := deadline - self._clock()) > 0 and not self._gives_up(new_work):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._changed.wait()

    def _gives_up(self, new_work: bool) -> bool:
        return self._closed or (new_work and self._abandon_new_work)

    def refusal(self, *, new_work: bool) -> LedgerError | None:
        """The error a call should fail with now instead of waiting more, or None."""
        if self._final is not None:
            return self._final
        if self._down is not None and self._gives_up(new_work):
            return self._down.error
        return None

    def _check(self, new_work: bool) -> None:
        refusal = self.refusal(new_work=new_work)
        if refusal is not None:
            raise refusal

    def _signal(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


def _say(event: str, **fields: object) -> None:
    # Outside the caller's context: the outage is the ledger's, not that of the job whose
    # statement happened to notice it (jobs bind their name to the context).
    contextvars.Context().run(log.warning, event, **fields)
