"""RateLimiter pacing and adaptation on virtual time, and one real-time check."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import statistics
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from structlog.testing import capture_logs

from batchsub.limiter import RateLimiter, parse_throttle_limit

START = 1_000.0
STATED = 0.97  # the limiter paces 3% under a limit the gateway states
APIG_0308 = "The throttling threshold has been reached: policy user over ratelimit,"


class FakeTime:
    """Virtual time: ``sleep`` parks the caller until ``run`` moves the clock to its wake-up.

    ``overshoot`` is added to the clock at each wake-up, as a real loop wakes a little late.
    """

    def __init__(self, overshoot: Callable[[], float] = lambda: 0.0) -> None:
        self.now = START
        self.overshoot = overshoot
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self.now + max(delay, 0.0), next(self._order), future))
        await future

    def parked(self) -> int:
        return sum(not future.done() for _, _, future in self._timers)

    async def run(self, tasks: Sequence[asyncio.Task[Any]]) -> None:
        """Run ``tasks`` to the end, moving time only while every live task is asleep."""
        while True:
            for _ in range(100):
                live = sum(not task.done() for task in tasks)
                if live == 0:
                    return
                if self.parked() >= live:
                    break
                await asyncio.sleep(0)
            else:
                raise AssertionError("a task is blocked on something other than the fake sleep")
            when, _, future = heapq.heappop(self._timers)
            if future.done():  # its sleeper was cancelled
                continue
            self.now = max(self.now, when) + self.overshoot()
            future.set_result(None)


async def no_sleep(delay: float) -> None:
    raise AssertionError(f"an unlimited limiter slept {delay}")


def make(rate: float, clock: FakeTime, **kwargs: Any) -> RateLimiter:
    return RateLimiter(rate, clock=clock, sleep=clock.sleep, **kwargs)


def interval(rate: float) -> float:
    return 1.02 / rate  # the default headroom is 2%


async def acquire_times(
    limiter: RateLimiter, clock: FakeTime, tasks: int, each: int
) -> list[float]:
    """Release times of ``tasks`` concurrent callers acquiring ``each`` slots, sorted."""
    times: list[float] = []

    async def worker() -> None:
        for _ in range(each):
            await limiter.acquire()
            times.append(clock.now)

    running = [asyncio.create_task(worker()) for _ in range(tasks)]
    await clock.run(running)
    await asyncio.gather(*running)
    return sorted(times)


def max_in_window(times: Sequence[float], window: float = 1.0) -> int:
    """The most release times any closed window ``[t, t + window]`` holds."""
    ordered = sorted(times)
    return max(bisect_right(ordered, t + window) - i for i, t in enumerate(ordered))


def gaps(times: Sequence[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


async def test_slots_are_evenly_spaced() -> None:
    clock = FakeTime()
    times = await acquire_times(make(10, clock), clock, tasks=1, each=20)
    assert times[0] == START  # nothing to wait for on a cold start
    assert gaps(times) == pytest.approx([interval(10)] * 19)


@pytest.mark.parametrize("rate", [7, 50, 200])
async def test_no_one_second_window_exceeds_rate_from_cold_start(rate: int) -> None:
    clock = FakeTime()
    times = await acquire_times(make(rate, clock), clock, tasks=50, each=20)
    assert len(times) == 1_000
    assert max_in_window(times) <= rate
    assert max_in_window(times) >= int(rate / 1.02)  # and not slower than the headroom
    assert sum(t <= START + 1.0 for t in times) <= rate  # no opening burst


@pytest.mark.parametrize("tasks", [1, 50])
async def test_long_run_keeps_97_percent_despite_overshoot(tasks: int) -> None:
    rng = random.Random(4)
    clock = FakeTime(overshoot=lambda: rng.uniform(0.0, 0.002))
    times = await acquire_times(make(100, clock), clock, tasks=tasks, each=2_000 // tasks)
    achieved = (len(times) - 1) / (times[-1] - times[0])
    assert 0.97 * 100 <= achieved <= 100
    assert max_in_window(times) <= 100


async def test_idle_time_buys_no_burst() -> None:
    clock = FakeTime()
    limiter = make(10, clock)
    await acquire_times(limiter, clock, tasks=1, each=3)
    clock.now += 60.0
    idle_start = clock.now
    times = await acquire_times(limiter, clock, tasks=5, each=1)
    assert times[0] == idle_start
    assert gaps(times) == pytest.approx([interval(10)] * 4)


async def test_late_wake_up_after_a_stall_is_not_a_burst() -> None:
    wakes = itertools.count()
    clock = FakeTime(overshoot=lambda: 0.5 if next(wakes) == 4 else 0.0)  # the loop stalls once
    times = await acquire_times(make(10, clock), clock, tasks=20, each=3)
    assert len(times) == 60
    assert min(gaps(times)) >= interval(10) - 0.01
    assert max_in_window(times) <= 10


async def test_unlimited_never_waits() -> None:
    clock = FakeTime()
    limiter = RateLimiter(0, clock=clock, sleep=no_sleep)
    for _ in range(1_000):
        await limiter.acquire()
    assert limiter.rate == 0.0
    assert limiter.configured_rate == 0.0
    limiter.on_success()  # nothing to recover towards
    assert limiter.rate == 0.0


async def test_unlimited_starts_pacing_at_stated_limit_on_429() -> None:
    clock = FakeTime()
    limiter = make(0, clock)
    limiter.on_throttled("policy user over ratelimit,limit:40,time:1 second")
    assert limiter.rate == pytest.approx(40 * STATED)
    assert limiter.configured_rate == 0.0
    times = await acquire_times(limiter, clock, tasks=10, each=10)
    assert gaps(times) == pytest.approx([interval(40 * STATED)] * 99)


async def test_unlimited_halves_observed_rate_on_bare_429_and_recovers_to_it() -> None:
    clock = FakeTime()
    limiter = make(0, clock, quiet_period=1.0)
    for _ in range(30):
        await limiter.acquire()
        clock.now += 0.02  # 50 req/s, 30 of them in the last second
    limiter.on_throttled()
    assert limiter.rate == pytest.approx(15)
    for _ in range(100):
        clock.now += 1.0
        limiter.on_success()
    assert limiter.rate == pytest.approx(30)


async def test_unlimited_bare_429_without_history_uses_fallback() -> None:
    clock = FakeTime()
    limiter = make(0, clock)
    limiter.on_throttled()
    assert limiter.rate == pytest.approx(0.5)


async def test_throttle_halves_then_floors_at_min_rate() -> None:
    clock = FakeTime()
    limiter = make(100, clock, min_rate=5)
    limiter.on_throttled()
    assert limiter.rate == 50
    assert limiter.throttled == 1
    for _ in range(10):
        clock.now += 2.0  # past the echo guard: each one is a new decrease
        limiter.on_throttled()
    assert limiter.rate == 5
    assert limiter.throttled == 11


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (APIG_0308 + "limit:40,time:1 second", 40 * STATED),
        (APIG_0308 + "limit:80,time:1 second", 80 * STATED),  # straight to the stated limit
        (APIG_0308 + "limit:200,time:5 minute", 200 / 300 * STATED),
        ("no limit stated", 50),
    ],
)
def test_throttle_goes_to_the_stated_limit_or_halves(message: str, expected: float) -> None:
    limiter = make(100, FakeTime())
    limiter.on_throttled(message)
    assert limiter.rate == pytest.approx(expected)


def test_stated_limit_caps_recovery() -> None:
    clock = FakeTime()
    limiter = make(100, clock)
    limiter.on_throttled("limit:40,time:1 second")
    limiter.on_throttled()  # an echo: no second halving
    for _ in range(50):
        clock.now += 5.0
        limiter.on_success()
    assert limiter.rate == pytest.approx(40 * STATED)


def test_echoes_of_one_throttle_decrease_once() -> None:
    clock = FakeTime()
    limiter = make(100, clock)
    for _ in range(20):  # requests in flight when the first 429 came back
        limiter.on_throttled()
        clock.now += 0.01
    assert limiter.rate == 50
    assert limiter.throttled == 20
    clock.now = START + 1.5
    limiter.on_throttled()  # still throttled after the guard: a real signal
    assert limiter.rate == 25


def test_sent_at_tells_echoes_from_new_signals() -> None:
    clock = FakeTime()
    limiter = make(100, clock)
    limiter.on_throttled(sent_at=START - 0.1)
    clock.now = START + 3.0
    limiter.on_throttled(sent_at=START - 0.05)  # sent before the decrease: an echo
    assert limiter.rate == 50
    limiter.on_throttled(sent_at=START + 2.0)  # sent at the lowered rate and still refused
    assert limiter.rate == 25


async def test_retry_after_holds_back_reserved_and_new_slots() -> None:
    clock = FakeTime()
    limiter = make(10, clock)
    times: list[float] = []

    async def caller() -> None:
        await limiter.acquire()
        times.append(clock.now)

    async def throttler() -> None:
        await clock.sleep(0.15)
        limiter.on_throttled(retry_after=2.0)

    callers = [asyncio.create_task(caller()) for _ in range(6)]
    await asyncio.sleep(0)  # every caller has reserved its slot
    tasks = [*callers, asyncio.create_task(throttler())]
    await clock.run(tasks)
    await asyncio.gather(*tasks)
    times.sort()
    assert times[:2] == pytest.approx([START, START + interval(10)])
    assert times[2] == pytest.approx(START + 2.15)
    assert gaps(times[2:]) == pytest.approx([interval(5)] * 3)
    assert limiter.rate == 5


async def test_retry_after_is_clamped() -> None:
    clock = FakeTime()
    limiter = make(10, clock, max_pause=60.0)
    limiter.on_throttled(retry_after=3_600.0)
    await acquire_times(limiter, clock, tasks=1, each=1)
    assert clock.now == pytest.approx(START + 60.0)


def test_recovery_is_additive_once_per_quiet_period_up_to_configured() -> None:
    clock = FakeTime()
    limiter = make(100, clock, quiet_period=5.0)
    limiter.on_throttled()
    assert limiter.rate == 50
    clock.now += 4.9
    limiter.on_success()
    assert limiter.rate == 50  # not quiet long enough
    clock.now += 0.1
    limiter.on_success()
    assert limiter.rate == 55  # default step: 5% of the configured rate
    clock.now += 1.0
    limiter.on_success()
    assert limiter.rate == 55  # once per quiet period
    seen = []
    for _ in range(30):
        clock.now += 5.0
        limiter.on_success()
        seen.append(limiter.rate)
    assert max(seen) == 100
    assert seen[-1] == 100


def test_any_429_restarts_the_quiet_period() -> None:
    clock = FakeTime()
    limiter = make(100, clock, quiet_period=5.0, recovery_step=10)
    limiter.on_throttled()
    clock.now += 0.5
    limiter.on_throttled()  # an echo: no decrease, but not quiet either
    clock.now += 4.6
    limiter.on_success()
    assert limiter.rate == 50
    clock.now += 0.4
    limiter.on_success()
    assert limiter.rate == 60


async def test_cancelled_waiters_leave_no_burst_and_the_tail_slot_is_reused() -> None:
    clock = FakeTime()
    limiter = make(10, clock)
    times: dict[str, float] = {}

    async def caller(name: str) -> None:
        await limiter.acquire()
        times[name] = clock.now

    tasks = {name: asyncio.create_task(caller(name)) for name in "abcde"}
    await asyncio.sleep(0)  # slots: a now, b +1, c +2, d +3, e +4 intervals
    tasks["e"].cancel()  # the newest reservation: its slot is given back
    tasks["c"].cancel()  # an older one: its slot is wasted, a gap
    for _ in range(3):
        await asyncio.sleep(0)
    tasks["f"] = asyncio.create_task(caller("f"))
    await clock.run(list(tasks.values()))
    assert tasks["c"].cancelled() and tasks["e"].cancelled()
    step = interval(10)
    assert times == pytest.approx(
        {"a": START, "b": START + step, "d": START + 3 * step, "f": START + 4 * step}
    )


async def test_throttle_is_logged_with_the_new_rate() -> None:
    limiter = make(100, FakeTime())
    with capture_logs() as logs:
        limiter.on_throttled("limit:40,time:1 second", retry_after=2.0)
    assert logs == [
        {
            "event": "limiter.throttled",
            "log_level": "warning",
            "rate": 38.8,
            "previous": 100.0,
            "stated_limit": 40.0,
            "pause": 2.0,
        }
    ]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rate": float("nan")},
        {"rate": 10, "min_rate": 0},
        {"rate": 10, "recovery_step": 0},
        {"rate": 10, "quiet_period": -1},
        {"rate": 10, "headroom": 0.6},
    ],
)
def test_invalid_settings_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RateLimiter(**kwargs)


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (APIG_0308 + "limit:200,time:5 minute", 200 / 300),
        (APIG_0308 + "limit:40,time:1 second", 40.0),
        ("policy ip over ratelimit,limit:600,time:1 minute", 10.0),
        ("APIGW.0308: policy user over ratelimit, limit:200, time:5 minute", 200 / 300),
        (
            '{"error_code":"APIG.0308","error_msg":"The throttling threshold has been reached: '
            'policy user over ratelimit,limit:3600,time:1 hour"}',
            1.0,
        ),
        ("policy user over ratelimit,limit:XX,time:1 second", None),
        ("limit:0,time:1 second", None),
        ("limit:5,time:1 fortnight", None),
        ("The throttling threshold has been reached", None),
        ("", None),
    ],
)
def test_parse_throttle_limit(message: str, expected: float | None) -> None:
    assert parse_throttle_limit(message) == (None if expected is None else pytest.approx(expected))


async def test_real_loop_paces_30_acquisitions_at_100_per_second() -> None:
    limiter = RateLimiter(100)
    loop = asyncio.get_running_loop()
    times: list[float] = []

    async def worker() -> None:
        for _ in range(6):
            await limiter.acquire()
            times.append(loop.time())

    start = loop.time()
    async with asyncio.TaskGroup() as group:
        for _ in range(5):
            group.create_task(worker())
    elapsed = loop.time() - start
    times.sort()
    assert 0.29 <= elapsed <= 0.5
    # Wake-ups on a busy machine are a few ms late, so single gaps vary; what the server
    # counts is windows: no 100 ms holds more than 10 (+1 for the closed end).
    assert max(sum(1 for t in times if s <= t <= s + 0.1) for s in times) <= 11
    assert statistics.median(gaps(times)) >= 0.009


async def test_stated_window_pauses_until_it_slides_then_paces_at_the_limit() -> None:
    # 40 went out too fast and filled the gateway's 1-second window: sending before it
    # slides only earns 429s, and halving on each of them would collapse the rate.
    clock = FakeTime()
    limiter = make(200, clock)
    limiter.on_throttled(APIG_0308 + "limit:40,time:1 second", sent_at=START)
    limiter.on_throttled(APIG_0308 + "limit:40,time:1 second", sent_at=START - 0.001)  # echo
    times = await acquire_times(limiter, clock, tasks=8, each=10)
    assert limiter.rate == pytest.approx(40 * STATED)
    assert times[0] == pytest.approx(START + 1.0)
    assert max_in_window(times) <= 40


def test_refused_at_the_stated_limit_slows_gently() -> None:
    # Already at what the gateway allows: the 429 is jitter or a shared quota, not a sign
    # that half would do.
    clock = FakeTime()
    limiter = make(100, clock)
    limiter.on_throttled(APIG_0308 + "limit:40,time:1 second", sent_at=START)
    clock.now += 5.0
    limiter.on_throttled(APIG_0308 + "limit:40,time:1 second", sent_at=clock.now - 0.01)
    assert limiter.rate == pytest.approx(40 * STATED * 0.9)


async def test_pause_ends_when_the_oldest_send_leaves_the_window() -> None:
    # 40 sent at 200/s from START: the gateway's window holds them until START + 1 (the
    # oldest leaves first), so waiting a whole window from the 429 would waste 0.2 s.
    clock = FakeTime()
    limiter = make(200, clock)
    burst = await acquire_times(limiter, clock, tasks=1, each=40)
    limiter.on_throttled(APIG_0308 + "limit:40,time:1 second", sent_at=clock.now)
    after = await acquire_times(limiter, clock, tasks=1, each=1)
    assert burst[0] == START
    assert after[0] == pytest.approx(START + 1.0 + 0.05)  # and the arrival margin
