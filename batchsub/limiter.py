"""Pace requests evenly, and adapt the pace to the API gateway's 429s.

We do not use asyncio-throttle: its ``Throttler(rate_limit, period)`` counts requests per window,
so a cold start or an idle gap lets ``rate_limit`` requests out at once, the burst issue 4 forbids.

``RateLimiter`` hands out evenly spaced send slots (burst of exactly 1), one limiter shared by
every entry point.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import structlog

log = structlog.get_logger(__name__)

# APIG.0308 "...policy user over ratelimit,limit:200,time:5 minute", also "limit:40, time:1 second"
_LIMIT_RE = re.compile(
    r"limit\s*:\s*(\d+(?:\.\d+)?)\s*,\s*time\s*:\s*(\d+(?:\.\d+)?)?\s*([a-z]+)", re.IGNORECASE
)
_UNIT_SECONDS = {
    **dict.fromkeys(("s", "sec", "secs", "second", "seconds"), 1.0),
    **dict.fromkeys(("m", "min", "mins", "minute", "minutes"), 60.0),
    **dict.fromkeys(("h", "hr", "hour", "hours"), 3600.0),
    **dict.fromkeys(("d", "day", "days"), 86400.0),
}
_ARRIVAL_MARGIN = 0.05  # seconds between a slot and its arrival at the gateway, at most
_STATED_MARGIN = 0.03  # pace this fraction under a limit the gateway states
_UNLIMITED_FALLBACK = 1.0  # req/s: first 429 in unlimited mode with nothing else to go on
_OBSERVE_WINDOW = 1.0  # seconds of acquisitions counted in unlimited mode


def parse_throttle_window(message: str) -> tuple[float, float] | None:
    """(requests, seconds) of the window an APIG throttling message states, or None.

    ``limit:200,time:5 minute`` gives (200, 300); ``limit:40,time:1 second`` gives (40, 1).
    """
    match = _LIMIT_RE.search(message)
    if match is None:
        return None
    limit = float(match[1])
    count = float(match[2]) if match[2] else 1.0
    unit = _UNIT_SECONDS.get(match[3].lower())
    if unit is None or limit <= 0 or count <= 0:
        return None
    return limit, count * unit


def parse_throttle_limit(message: str) -> float | None:
    """Requests per second stated by an APIG throttling message (``limit:N,time:T unit``).

    ``limit:200,time:5 minute`` gives 0.666..., ``limit:40,time:1 second`` gives 40. None when
    the message states no usable limit.
    """
    window = parse_throttle_window(message)
    return None if window is None else window[0] / window[1]


@dataclass(eq=False, slots=True)
class _Ticket:
    slot: float  # loop time at which the holder may send
    seq: int  # reservation number, to give back the newest slot on cancellation


class RateLimiter:
    """Evenly spaced send slots at an adaptive rate (AIMD on 429s).

    ``acquire`` reserves the next slot, ``max(now, previous slot + interval)``, before sleeping,
    so concurrent callers queue FIFO with no thundering herd and idle time never buys a burst.
    The interval is ``(1 + headroom) / rate``: a window of R slots spans ``1 + headroom``
    seconds, so if send times stray from their slots by less than ``headroom`` seconds (sleep
    overshoot, network jitter), no 1-second window at the server holds more than R requests.
    A waiter that wakes more than ``headroom / 2`` late (the loop stalled) takes a fresh slot
    instead of sending with the others that woke late too; smaller overshoot never accumulates.

    Unlimited (``rate <= 0``): ``acquire`` returns at once until the first 429, which starts
    pacing at the parsed limit, or else at half the rate seen over the last second (1 req/s if
    fewer than two requests were seen); that start rate is then the ceiling for recovery.
    """

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        recovery_step: float | None = None,
        quiet_period: float = 5.0,
        min_rate: float = 0.1,
        max_pause: float = 60.0,
        decrease_guard: float = 1.0,
        headroom: float = 0.02,
    ) -> None:
        if not math.isfinite(rate):
            raise ValueError(f"rate must be a finite number (<= 0 for unlimited), got {rate}")
        if not min_rate > 0:
            raise ValueError(f"min_rate must be > 0, got {min_rate}")
        if recovery_step is not None and not recovery_step > 0:
            raise ValueError(f"recovery_step must be > 0, got {recovery_step}")
        if quiet_period < 0 or max_pause < 0 or decrease_guard < 0:
            raise ValueError("quiet_period, max_pause and decrease_guard must be >= 0")
        if not 0 <= headroom < 0.5:
            raise ValueError(f"headroom must be in [0, 0.5), got {headroom}")
        self._clock = clock
        self._sleep = sleep or asyncio.sleep
        self._configured = max(rate, 0.0)
        self._ceiling = self._configured  # 0.0: no ceiling (unlimited, never throttled)
        self._rate = self._configured  # 0.0: unlimited
        self._recovery_step = recovery_step
        self._quiet_period = quiet_period
        self._min_rate = min_rate
        self._max_pause = max_pause
        self._decrease_guard = decrease_guard
        self._headroom = headroom
        self._next_free = -math.inf  # earliest slot a new reservation may get
        self._last_release = -math.inf  # latest slot actually used
        self._paused_until = -math.inf
        self._pending: deque[_Ticket] = deque()  # sleeping reservations, in slot order
        self._seq = 0
        self._throttled = 0
        self._last_throttle = -math.inf
        self._last_decrease = -math.inf
        self._guard_until = -math.inf
        self._last_increase = -math.inf
        self._recent: deque[float] = deque()  # acquisition times, unlimited mode only
        self._released: deque[float] = deque(maxlen=4096)  # recent slots used, limited mode

    @property
    def rate(self) -> float:
        """Current target rate in requests per second; 0.0 while unlimited."""
        return self._rate

    @property
    def configured_rate(self) -> float:
        """The rate asked for (``--rate``); 0.0 for unlimited."""
        return self._configured

    @property
    def throttled(self) -> int:
        """How many 429s were reported through ``on_throttled``."""
        return self._throttled

    async def acquire(self) -> None:
        """Wait for this caller's send slot; return at once while unlimited."""
        now = self._now()
        if self._rate <= 0:
            self._observe(now)
            return
        ticket = self._reserve(now)
        if ticket.slot <= now:
            self._release(ticket.slot)
            return
        self._pending.append(ticket)
        released = False
        try:
            while True:
                await self._sleep(ticket.slot - now)
                now = self._now()
                if now < ticket.slot:  # pushed back by a 429 while asleep
                    continue
                if now - ticket.slot <= self._headroom / 2:
                    break
                # Woke too late (the loop stalled): the others due meanwhile woke together too,
                # so sending now would be a burst. Take a fresh slot at the end of the line.
                self._pending.remove(ticket)
                fresh = self._reserve(now)
                ticket.slot, ticket.seq = fresh.slot, fresh.seq
                self._pending.append(ticket)
                if ticket.slot <= now:
                    break
            released = True
            self._release(ticket.slot)
        finally:
            self._pending.remove(ticket)
            if not released and ticket.seq == self._seq:
                # Cancelled with nobody booked after it: give the slot back. An older cancelled
                # slot is simply wasted, which only leaves a gap.
                self._next_free = ticket.slot
                self._seq -= 1

    def on_throttled(
        self,
        message: str | None = None,
        retry_after: float | None = None,
        *,
        sent_at: float | None = None,
    ) -> None:
        """Lower the rate after a 429: halve it, or to the limit the message states if lower.

        429s for requests already in flight at the last decrease are echoes of it and do not
        halve again: those sent before it (``sent_at``, loop time, when the caller knows it),
        else those arriving within ``max(decrease_guard, one interval)`` after it. A stated
        limit also caps recovery. ``retry_after`` (clamped to ``max_pause``) stops every
        slot, including those already reserved, until it has passed.
        """
        now = self._now()
        self._throttled += 1
        self._last_throttle = now
        window = parse_throttle_window(message) if message else None
        stated = window[0] / window[1] if window else None
        # Aim a little under a stated limit: the gateway counts arrivals, which jitter.
        limit = stated * (1 - _STATED_MARGIN) if stated is not None else None
        if limit is not None:
            self._ceiling = limit if self._ceiling <= 0 else min(self._ceiling, limit)
        previous = self._rate
        echo = False
        if previous <= 0:
            self._start_limiting(now, limit)
        else:
            echo = sent_at < self._last_decrease if sent_at is not None else now < self._guard_until
            if echo:
                target = previous
            elif limit is not None and previous > limit:
                target = limit  # the gateway said what it allows: go straight there
            elif limit is not None:
                # At the stated limit and still refused: jitter, or others share the quota.
                target = previous * 0.9
            else:
                target = previous * 0.5
            self._rate = self._clamp(target)
        pause = min(retry_after, self._max_pause) if retry_after and retry_after > 0 else 0.0
        if window is not None and not echo:
            # The gateway's window is full until it slides past what was sent too fast; sending
            # during it only earns more 429s (and, halving on each, a collapsed rate).
            pause = max(pause, min(self._window_clears(now, window[1]) - now, self._max_pause))
        if self._rate < previous or previous <= 0:
            self._last_decrease = now
            self._guard_until = now + max(self._decrease_guard, self._interval(), pause)
        if pause > 0:
            self._paused_until = max(self._paused_until, now + pause)
        if self._rate != previous or pause > 0:
            self._respace()
            log.warning(
                "limiter.throttled",
                rate=round(self._rate, 3),
                previous=round(previous, 3),
                stated_limit=None if stated is None else round(stated, 3),
                pause=pause,
            )

    def on_success(self) -> None:
        """Raise the rate by one step once a quiet period has passed without 429s."""
        if self._ceiling <= 0 or self._rate >= self._ceiling:
            return
        now = self._now()
        if now - max(self._last_throttle, self._last_increase) < self._quiet_period:
            return
        step = self._recovery_step or 0.05 * self._ceiling
        self._rate = min(self._ceiling, self._rate + step)
        self._last_increase = now
        log.info("limiter.recovered", rate=round(self._rate, 3), ceiling=round(self._ceiling, 3))

    def _release(self, slot: float) -> None:
        self._last_release = max(self._last_release, slot)
        self._released.append(slot)

    def _window_clears(self, now: float, seconds: float) -> float:
        """When a window of ``seconds`` no longer holds anything sent before ``now``.

        That is the oldest send inside the last window, plus the window: sliding or fixed,
        the gateway's count has dropped by then. Unknown history: a whole window from now.
        """
        sent = self._released if self._rate > 0 else self._recent
        oldest = next((t for t in sent if t > now - seconds), None)
        # A request reaches the gateway a little after its slot: resuming exactly one window
        # after the slot would find it still counted, and earn one more 429.
        margin = max(_ARRIVAL_MARGIN, seconds * self._headroom)
        return now + seconds if oldest is None else oldest + seconds + margin

    def _now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    def _interval(self) -> float:
        return (1.0 + self._headroom) / self._rate

    def _clamp(self, rate: float) -> float:
        return max(min(self._min_rate, self._ceiling), min(rate, self._ceiling))

    def _reserve(self, now: float) -> _Ticket:
        slot = max(now, self._next_free)
        self._next_free = slot + self._interval()
        self._seq += 1
        return _Ticket(slot, self._seq)

    def _respace(self) -> None:
        """Push reserved slots back to the current interval and past any pause, never earlier."""
        interval = self._interval()
        earliest = max(self._last_release + interval, self._paused_until)
        for ticket in self._pending:
            ticket.slot = max(ticket.slot, earliest)
            earliest = ticket.slot + interval
        self._next_free = max(self._next_free, earliest)

    def _observe(self, now: float) -> None:
        self._recent.append(now)
        self._forget_before(now - _OBSERVE_WINDOW)

    def _forget_before(self, oldest: float) -> None:
        while self._recent and self._recent[0] <= oldest:
            self._recent.popleft()

    def _start_limiting(self, now: float, limit: float | None) -> None:
        if limit is not None:
            self._rate = limit
            return
        self._forget_before(now - _OBSERVE_WINDOW)
        seen = len(self._recent) / _OBSERVE_WINDOW
        self._ceiling = max(seen, self._min_rate) if len(self._recent) >= 2 else _UNLIMITED_FALLBACK
        self._rate = self._clamp(self._ceiling * 0.5)
        self._recent.clear()
