"""Fault injection and throttling: which request misbehaves, which request gets a 429."""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from enum import StrEnum

from batchsub.simulator.config import SimulatorConfig


class Fault(StrEnum):
    """A misbehaviour of one request or of one started job; each is a config field."""

    # create: the ``*_after_create`` ones create the job
    FAIL_5XX = "fail_5xx"
    DLI0999 = "dli0999"
    DROP_AFTER_CREATE = "drop_after_create"
    ERROR_504_AFTER_CREATE = "error_504_after_create"
    SLOW_AFTER_CREATE = "slow_after_create"
    DLI0999_AFTER_CREATE = "dli0999_after_create"
    # a job started by a run call
    SUBMIT_FAIL = "submit_fail"
    FAIL_AFTER_RUN = "fail_after_run"
    # run, stop and update calls: the call takes effect, then its answer is lost
    DROP_AFTER_RUN = "drop_after_run"
    ERROR_504_AFTER_RUN = "error_504_after_run"
    DROP_AFTER_STOP = "drop_after_stop"
    ERROR_504_AFTER_STOP = "error_504_after_stop"
    DROP_AFTER_UPDATE = "drop_after_update"
    ERROR_504_AFTER_UPDATE = "error_504_after_update"


CREATE_FAULTS = (
    Fault.FAIL_5XX,
    Fault.DLI0999,
    Fault.DROP_AFTER_CREATE,
    Fault.ERROR_504_AFTER_CREATE,
    Fault.SLOW_AFTER_CREATE,
    Fault.DLI0999_AFTER_CREATE,
)
START_FAULTS = (Fault.SUBMIT_FAIL, Fault.FAIL_AFTER_RUN)
RUN_FAULTS = (Fault.DROP_AFTER_RUN, Fault.ERROR_504_AFTER_RUN)
STOP_FAULTS = (Fault.DROP_AFTER_STOP, Fault.ERROR_504_AFTER_STOP)
UPDATE_FAULTS = (Fault.DROP_AFTER_UPDATE, Fault.ERROR_504_AFTER_UPDATE)

BEFORE_CREATE = frozenset({Fault.FAIL_5XX, Fault.DLI0999})
DROPS = frozenset(
    {Fault.DROP_AFTER_CREATE, Fault.DROP_AFTER_RUN, Fault.DROP_AFTER_STOP, Fault.DROP_AFTER_UPDATE}
)
TIMEOUTS_504 = frozenset(
    {
        Fault.ERROR_504_AFTER_CREATE,
        Fault.ERROR_504_AFTER_RUN,
        Fault.ERROR_504_AFTER_STOP,
        Fault.ERROR_504_AFTER_UPDATE,
    }
)


def seeded_rng(config: SimulatorConfig, stream: str) -> random.Random:
    """An RNG of its own per stream, so that one kind of call never shifts another's draws."""
    return random.Random(None if config.seed is None else f"{config.seed}:{stream}")


class FaultPicker:
    """Draws at most one fault of a group per request (or per started job).

    The create group draws from ``Random(seed)`` as it always has, so seeded create schedules
    stay as they were; every other group has its own stream.
    """

    def __init__(self, config: SimulatorConfig, group: Sequence[Fault] = CREATE_FAULTS) -> None:
        self._rng = (
            random.Random(config.seed)
            if group is CREATE_FAULTS
            else seeded_rng(config, group[0].value)
        )
        self._slices = [(f, float(getattr(config, f.value))) for f in group]
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
