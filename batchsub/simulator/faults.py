"""Fault injection and throttling: which create request misbehaves, which request gets a 429."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable
from enum import StrEnum

from batchsub.simulator.config import SimulatorConfig


class Fault(StrEnum):
    """A misbehaviour of one create request; the ``*_after_create`` ones create the job."""

    FAIL_5XX = "fail_5xx"
    DLI0999 = "dli0999"
    DROP_AFTER_CREATE = "drop_after_create"
    ERROR_504_AFTER_CREATE = "error_504_after_create"
    SLOW_AFTER_CREATE = "slow_after_create"
    DLI0999_AFTER_CREATE = "dli0999_after_create"


BEFORE_CREATE = frozenset({Fault.FAIL_5XX, Fault.DLI0999})


class FaultPicker:
    """Draws at most one fault per create request from the configured probabilities."""

    def __init__(self, config: SimulatorConfig) -> None:
        self._rng = random.Random(config.seed)
        self._slices = [(f, float(getattr(config, f.value))) for f in Fault]
        self._slices = [(f, p) for f, p in self._slices if p > 0]

    def pick(self) -> Fault | None:
        """One fault or None; one uniform draw split into consecutive slices."""
        if not self._slices:
            return None
        u = self._rng.random()
        edge = 0.0
        for fault, p in self._slices:
            edge += p
            if u < edge:
                return fault
        return None

    def choice(self, options: tuple[int, ...]) -> int:
        """A seeded choice among options (which 5xx status to send)."""
        return self._rng.choice(options)


class RateWindow:
    """At most ``limit`` admitted requests in any sliding second; rejected ones do not count.

    ``limit`` is the configured rate truncated to an int, at least 1.
    """

    def __init__(self, rate: float, clock: Callable[[], float]) -> None:
        self.limit = max(1, int(rate))
        self._clock = clock
        self._times: deque[float] = deque()

    def admit(self) -> bool:
        """Count this request and return True, or return False when the window is full."""
        now = self._clock()
        times = self._times
        while times and now - times[0] >= 1.0:
            times.popleft()
        if len(times) >= self.limit:
            return False
        times.append(now)
        return True
