"""RetryPolicy backoff bounds and limits, Retry-After parsing, and the RetryBudget."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from batchsub.retry import RetryBudget, RetryPolicy, parse_retry_after

NOW = datetime(2015, 10, 21, 7, 27, 30, tzinfo=UTC)


def test_defaults() -> None:
    policy = RetryPolicy()
    assert (policy.max_attempts, policy.base_delay, policy.max_delay) == (10, 0.5, 30.0)
    assert (policy.retry_after_cap, policy.job_deadline) == (120.0, 900.0)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_attempts", 0),
        ("base_delay", 0.0),
        ("max_delay", -1.0),
        ("retry_after_cap", 0.0),
        ("job_deadline", -5.0),
        ("base_delay", float("nan")),
    ],
)
def test_non_positive_values_are_refused(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"RetryPolicy.{field} must be a positive number"):
        RetryPolicy(**{field: value})


def test_base_delay_above_max_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="base_delay"):
        RetryPolicy(base_delay=10.0, max_delay=1.0)


def test_attempts_count_from_one() -> None:
    with pytest.raises(ValueError, match="attempt"):
        RetryPolicy().delay(0)


@given(
    attempt=st.integers(min_value=1, max_value=5_000),
    retry_after=st.none() | st.floats(min_value=-10.0, max_value=10_000.0),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_delay_bounds(attempt: int, retry_after: float | None, seed: int) -> None:
    policy = RetryPolicy()
    delay = policy.delay(attempt, retry_after=retry_after, rng=random.Random(seed))
    backoff_cap = min(policy.max_delay, policy.base_delay * 2.0 ** min(attempt - 1, 60))
    floor = min(retry_after, policy.retry_after_cap) if retry_after and retry_after > 0 else 0.0
    assert 0.0 <= delay <= max(backoff_cap, floor)
    assert delay >= floor


def test_delay_is_full_jitter_under_the_doubling_cap() -> None:
    policy = RetryPolicy(base_delay=0.5, max_delay=30.0)
    rng = random.Random(7)
    third = [policy.delay(3, rng=rng) for _ in range(2_000)]
    assert max(third) <= 2.0
    assert min(third) < 0.1 and max(third) > 1.9  # spread over the whole range
    late = [policy.delay(40, rng=rng) for _ in range(2_000)]
    assert max(late) <= 30.0 and max(late) > 29.0


def test_delay_honours_retry_after_up_to_its_cap() -> None:
    policy = RetryPolicy(retry_after_cap=120.0)
    assert policy.delay(1, retry_after=45.0) >= 45.0
    assert policy.delay(1, retry_after=10_000.0) == 120.0


def test_delay_is_reproducible_with_a_seeded_rng() -> None:
    policy = RetryPolicy()
    assert policy.delay(4, rng=random.Random(3)) == policy.delay(4, rng=random.Random(3))


def test_should_retry_stops_at_max_attempts_and_deadline() -> None:
    policy = RetryPolicy(max_attempts=3, job_deadline=100.0)
    assert policy.should_retry(1, elapsed=0.0, next_delay=1.0)
    assert policy.should_retry(2, elapsed=90.0, next_delay=10.0)  # lands exactly on it
    assert not policy.should_retry(3, elapsed=0.0, next_delay=1.0)
    assert not policy.should_retry(2, elapsed=90.0, next_delay=10.5)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("120", 120.0),
        ("  5 ", 5.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("Wed, 21 Oct 2015 07:28:00 GMT", 30.0),  # IMF-fixdate
        ("Wednesday, 21-Oct-15 07:28:00 GMT", 30.0),  # obsolete RFC 850
        ("Wed Oct 21 07:28:00 2015", 30.0),  # obsolete asctime, no zone: UTC
        ("Wed, 21 Oct 2015 07:00:00 GMT", 0.0),  # in the past
        ("-5", None),
        ("soon", None),
        ("", None),
        ("9" * 400, None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


def test_parse_retry_after_takes_a_naive_now_as_utc() -> None:
    naive = NOW.replace(tzinfo=None)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=naive) == 30.0


def test_parse_retry_after_defaults_to_the_current_time() -> None:
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
    later = parse_retry_after("Fri, 01 Jan 2100 00:00:00 GMT")
    assert later is not None and later > 365 * 86_400


def test_retry_budget_spends_refunds_and_refuses() -> None:
    budget = RetryBudget(capacity=20, retry_cost=5, timeout_cost=10, success_refund=1)
    assert budget.try_spend()
    assert budget.try_spend(timeout=True)
    assert budget.available == 5
    assert not budget.try_spend(timeout=True)  # cannot pay 10: nothing taken
    assert budget.available == 5
    assert budget.try_spend()
    assert not budget.try_spend()
    assert budget.exhausted == 2
    for _ in range(3):
        budget.refund()
    assert budget.available == 3
    for _ in range(100):
        budget.refund()
    assert budget.available == 20  # capped


def test_retry_budget_defaults_match_the_aws_quota() -> None:
    budget = RetryBudget()
    spent = 0
    while budget.try_spend():
        spent += 1
    assert spent == 100  # 500 tokens at 5 each
    assert budget.exhausted == 1


def test_retry_budget_rejects_non_positive_settings() -> None:
    with pytest.raises(ValueError, match="capacity"):
        RetryBudget(capacity=0)
