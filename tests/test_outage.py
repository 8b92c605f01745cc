"""Outage: ledger calls wait through an outage, one probe at a time, logged once each way."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable, MutableMapping
from typing import Any

import pytest
from structlog.testing import capture_logs

from batchsub.errors import LedgerError, LedgerUnavailable
from batchsub.ledgers.outage import Outage

FAST: dict[str, Any] = {"first_delay": 0.01, "max_delay": 0.02}


def down(reason: str = "write failed: connection refused") -> LedgerUnavailable:
    return LedgerUnavailable("postgresql://u:***@db/x", reason)


class Flaky:
    """A ledger statement that fails with ``error`` until ``back`` is set; counts its tries."""

    def __init__(self, error: Callable[[], BaseException] = down) -> None:
        self.back = False
        self.error = error
        self.tries = 0
        self.running = 0
        self.most_at_once_while_down = 0

    async def __call__(self) -> str:
        self.tries += 1
        self.running += 1
        try:
            await asyncio.sleep(0.005)
            if not self.back:
                self.most_at_once_while_down = max(self.most_at_once_while_down, self.running)
                raise self.error()
            return "ok"
        finally:
            self.running -= 1


def events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


async def test_calls_wait_through_an_outage_one_probe_at_a_time() -> None:
    changes: list[str | None] = []
    outage = Outage(limit=None, on_change=changes.append, **FAST)
    statement = Flaky()
    with capture_logs() as logs:
        calls = [asyncio.create_task(outage.run(statement)) for _ in range(10)]
        await asyncio.sleep(0.3)
        assert not any(call.done() for call in calls)
        assert outage.problem == "write failed: connection refused"
        tries_while_down = statement.tries
        statement.back = True
        results = await asyncio.wait_for(asyncio.gather(*calls), 2)

    assert results == ["ok"] * 10
    assert outage.problem is None
    # Ten callers failed once each at the start; then a single probe retried, with backoff.
    assert 10 < tries_while_down < 10 + 40
    [unavailable] = events(logs, "ledger.unavailable")
    assert unavailable["ledger"] == "postgresql://u:***@db/x"
    assert unavailable["error"] == "write failed: connection refused"
    [recovered] = events(logs, "ledger.recovered")
    assert recovered["down_s"] >= 0.3
    assert changes == ["write failed: connection refused", None]


async def test_only_one_statement_is_tried_at_a_time_during_an_outage() -> None:
    outage = Outage(limit=None, **FAST)
    statement = Flaky()
    calls = [asyncio.create_task(outage.run(statement)) for _ in range(20)]
    await asyncio.sleep(0.1)  # all twenty failed once, together: the outage has begun
    statement.most_at_once_while_down = 0
    await asyncio.sleep(0.3)
    assert statement.most_at_once_while_down == 1
    statement.back = True
    assert await asyncio.wait_for(asyncio.gather(*calls), 2) == ["ok"] * 20


async def test_past_the_limit_every_call_fails_with_one_line_saying_how_long() -> None:
    outage = Outage(limit=0.2, **FAST)
    statement = Flaky()
    with pytest.raises(LedgerUnavailable) as caught:
        await asyncio.wait_for(outage.run(statement), 2)
    message = str(caught.value)
    assert re.fullmatch(
        r"ledger postgresql://u:\*\*\*@db/x unreachable for \d+ s: "
        r"write failed: connection refused",
        message,
    ), message
    tries = statement.tries
    with pytest.raises(LedgerUnavailable) as again:
        await outage.run(statement)
    assert str(again.value) == message
    assert statement.tries == tries  # given up: not even tried


async def test_without_a_limit_set_nothing_waits() -> None:
    outage = Outage()  # what a ledger gets by default: status, report, plan
    statement = Flaky()
    with capture_logs() as logs, pytest.raises(LedgerUnavailable) as caught:
        await outage.run(statement)
    assert str(caught.value) == "ledger postgresql://u:***@db/x: write failed: connection refused"
    assert statement.tries == 1
    assert outage.problem is None
    assert logs == []


async def test_startup_has_its_own_limit() -> None:
    outage = Outage(limit=None, startup_limit=0.0, **FAST)
    with pytest.raises(LedgerUnavailable):
        await outage.run(Flaky(), startup=True)  # `run` does not start without its ledger


async def test_stop_waiting_ends_new_work_while_outcomes_keep_waiting() -> None:
    outage = Outage(limit=None, **FAST)
    statement = Flaky()
    claim = asyncio.create_task(outage.run(statement, new_work=True))
    outcome = asyncio.create_task(outage.run(statement, new_work=False))
    await asyncio.sleep(0.1)
    outage.stop_waiting()
    with pytest.raises(LedgerUnavailable):
        await asyncio.wait_for(claim, 1)
    await asyncio.sleep(0.1)
    assert not outcome.done()
    statement.back = True
    assert await asyncio.wait_for(outcome, 1) == "ok"


async def test_close_ends_every_wait() -> None:
    outage = Outage(limit=None, **FAST)
    statement = Flaky()
    calls = [asyncio.create_task(outage.run(statement, new_work=n % 2 == 0)) for n in range(4)]
    await asyncio.sleep(0.1)
    outage.close()
    for call in calls:
        with pytest.raises(LedgerUnavailable):
            await asyncio.wait_for(call, 1)


async def test_a_refused_statement_ends_the_outage() -> None:
    outage = Outage(limit=None, **FAST)
    statement = Flaky()
    call = asyncio.create_task(outage.run(statement))
    await asyncio.sleep(0.1)
    statement.error = lambda: LedgerError("ledger x: write failed: permission denied")
    with capture_logs() as logs, pytest.raises(LedgerError, match="permission denied"):
        await asyncio.wait_for(call, 1)
    assert outage.problem is None  # it answered: reachable, if unhappy
    assert len(events(logs, "ledger.recovered")) == 1


async def test_a_long_outage_is_logged_again_now_and_then() -> None:
    outage = Outage(limit=None, remind_every=0.1, **FAST)
    statement = Flaky()
    with capture_logs() as logs:
        call = asyncio.create_task(outage.run(statement))
        await asyncio.sleep(0.45)
        statement.back = True
        await asyncio.wait_for(call, 1)
    assert len(events(logs, "ledger.unavailable")) == 1
    assert 2 <= len(events(logs, "ledger.still_unavailable")) <= 5
    assert len(events(logs, "ledger.recovered")) == 1


async def test_a_cancelled_probe_hands_over_to_the_next_caller() -> None:
    outage = Outage(limit=None, **FAST)
    statement = Flaky()
    first = asyncio.create_task(outage.run(statement))
    await asyncio.sleep(0.05)
    second = asyncio.create_task(outage.run(statement))
    await asyncio.sleep(0.05)
    first.cancel()
    await asyncio.sleep(0.05)
    tries = statement.tries
    await asyncio.sleep(0.1)
    assert statement.tries > tries  # someone still probes
    statement.back = True
    assert await asyncio.wait_for(second, 1) == "ok"


async def test_ready_returns_once_the_ledger_answers() -> None:
    outage = Outage(limit=None, **FAST)
    await asyncio.wait_for(outage.ready(), 0.1)  # no outage: at once
    statement = Flaky()
    call = asyncio.create_task(outage.run(statement))
    await asyncio.sleep(0.05)
    waiting = asyncio.create_task(outage.ready())
    await asyncio.sleep(0.1)
    assert not waiting.done()
    statement.back = True
    await asyncio.wait_for(asyncio.gather(call, waiting), 1)
