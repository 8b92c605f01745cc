"""--waves parsing, wave sizes for N jobs, and the controller that holds a failing rollout."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchsub.errors import ConfigError
from batchsub.lifecycle.waves import Wave, WaveController, parse_waves, wave_sizes


@pytest.mark.parametrize(
    ("spec", "total", "sizes"),
    [
        ("1,10%,100%", 100, [1, 9, 90]),
        ("1,10%,100%", 3, [1, 2]),  # 10% of 3 rounds up to 1: that wave is empty, dropped
        ("5,100%", 100, [5, 95]),
        ("5,100%", 3, [3]),  # a count beyond the jobs there are means all of them
        ("1,10%", 100, [1, 9, 90]),  # the jobs left after the last target: one more wave
        ("10", 25, [10, 15]),
        ("2.5%,50%", 200, [5, 95, 100]),
        ("100%", 7, [7]),
        (" 1 , 10 % ", 20, [1, 1, 18]),
        ("1,10%,100%", 0, []),
    ],
)
def test_wave_sizes(spec: str, total: int, sizes: list[int]) -> None:
    assert wave_sizes(parse_waves(spec), total) == sizes


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("5,3", "wave 2 (3) must be more than an earlier wave (5)"),
        ("10%,10%", "wave 2 (10%) must be more than an earlier wave (10%)"),
        ("0", "wave 1 is 0: a wave holds at least one job"),
        ("0%", "wave 1 is 0%"),
        ("150%", "wave 1 is 150%: more than 100% of the jobs"),
        ("abc", "wave 1 ('abc') is neither a number of jobs nor a percentage"),
        ("-1", "is neither a number"),
        ("1.5", "is neither a number"),
        ("1e3", "is neither a number"),
        ("10%%", "is neither a number"),
        ("", "wave 1 is empty"),
        ("1,,2", "wave 2 is empty"),
        ("1,", "wave 2 is empty"),
        ("100%,5", "wave 2 comes after 100%"),
        ("50%,100%,100%", "wave 3 comes after 100%"),
    ],
)
def test_bad_waves_are_refused_with_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_waves(spec)
    assert message in str(caught.value)
    assert f"--waves {spec}:" in str(caught.value)


def test_a_percentage_below_an_earlier_count_for_these_jobs_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"wave 2 \(10% of 100 jobs = 10\) is smaller"):
        wave_sizes(parse_waves("50,10%"), 100)
    assert wave_sizes(parse_waves("50,10%"), 1000) == [50, 50, 900]


targets = st.lists(
    st.one_of(
        st.integers(1, 10_000).map(str),
        st.decimals(min_value="0.1", max_value=100, places=1).map(lambda d: f"{d}%"),
    ),
    min_size=1,
    max_size=6,
)


@given(spec=targets, total=st.integers(0, 5000))
def test_any_valid_spec_sends_every_job_once_in_growing_waves(spec: list[str], total: int) -> None:
    try:
        parsed = parse_waves(",".join(spec))
        sizes = wave_sizes(parsed, total)
    except ConfigError as exc:
        assert "--waves" in str(exc)  # refused with a clear error, never anything else
        return
    assert sum(sizes) == total and all(size > 0 for size in sizes)
    assert len(sizes) <= len(parsed) + 1
    # Each target is reached exactly at the end of some wave (or beyond every job).
    ends = {sum(sizes[: i + 1]) for i in range(len(sizes))}
    for target in parsed:
        reached = target.jobs(total)
        assert reached == 0 or reached in ends
        if target.percent:
            assert reached == min(total, math.ceil(target.value * total / 100))


@given(
    sizes=st.lists(st.integers(1, 50), min_size=1, max_size=8),
    max_failures=st.integers(0, 20),
    data=st.data(),
)
def test_the_controller_holds_the_rest_exactly_when_failures_pass_the_limit(
    sizes: list[int], max_failures: int, data: st.DataObject
) -> None:
    controller = WaveController(sizes, max_failures)
    failures = 0
    sent: list[Wave] = []
    while (wave := controller.next_wave()) is not None:
        assert wave == Wave(len(sent) + 1, sizes[len(sent)])
        sent.append(wave)
        failed = data.draw(st.integers(0, wave.size))
        failures += failed
        go_on = controller.finish(failed)
        assert go_on == (failures <= max_failures)
        if not go_on:
            break
    assert controller.next_wave() is None
    assert controller.sent + controller.held == sum(sizes)
    assert controller.sent == sum(w.size for w in sent)
    assert controller.holding == (failures > max_failures)
    assert controller.held == (sum(sizes[len(sent) :]) if controller.holding else 0)


def test_controller_misuse_is_refused() -> None:
    with pytest.raises(ValueError):
        WaveController([3, 0])
    with pytest.raises(ValueError):
        WaveController([3], max_failures=-1)
    controller = WaveController([2, 3])
    with pytest.raises(RuntimeError):
        controller.finish(0)
    assert controller.next_wave() == Wave(1, 2)
    with pytest.raises(RuntimeError):
        controller.next_wave()
    with pytest.raises(ValueError):
        controller.finish(3)
    assert controller.finish(0) and controller.next_wave() == Wave(2, 3)
    assert not controller.finish(1)  # max_failures defaults to 0 with waves
    assert controller.next_wave() is None and controller.held == 0
