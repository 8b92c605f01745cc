"""PostgresLedger through a faulty link (the TCP proxy of tests.faults) and its error classes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, MutableMapping
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from batchsub.errors import LedgerError, LedgerRefusedError, LedgerUnavailable
from batchsub.jobs import LedgerState
from batchsub.ledgers.outage import Outage
from batchsub.ledgers.postgres import PostgresLedger
from tests.faults import Proxy, via
from tests.pg import HOST, PORT, fresh_database, postgres_listening
from tests.support import attempt_of, job_spec

pytestmark = pytest.mark.skipif(
    not postgres_listening(), reason=f"no PostgreSQL server listens on {HOST}:{PORT}"
)

P = "project-1"
TIMEOUT = 0.5  # seconds per statement and connection attempt
FAST: dict[str, Any] = {"first_delay": 0.05, "max_delay": 0.1}


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    async with fresh_database() as url:
        yield url


@pytest.fixture
def proxy() -> Iterator[Proxy]:
    with Proxy(PORT) as running:
        yield running


def ledger_via(proxy: Proxy, dsn: str, outage: Outage, **kwargs: Any) -> PostgresLedger:
    return PostgresLedger(
        via(dsn, proxy),
        owner="w1",
        connect_timeout=TIMEOUT,
        command_timeout=TIMEOUT,
        outage=outage,
        **kwargs,
    )


async def state_of(dsn: str, name: str) -> tuple[str, int | None] | None:
    """(state, job_id) of a row, read on a connection of the test's own."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow("SELECT state, job_id FROM batchsub_jobs WHERE name = $1", name)
    finally:
        await conn.close()
    return None if row is None else (row["state"], row["job_id"])


def events(logs: list[MutableMapping[str, Any]], name: str) -> list[MutableMapping[str, Any]]:
    return [entry for entry in logs if entry["event"] == name]


async def test_a_frozen_link_times_out_and_the_call_goes_on_after_it(
    proxy: Proxy, dsn: str
) -> None:
    outage = Outage(limit=None, **FAST)
    async with ledger_via(proxy, dsn, outage) as ledger:
        await ledger.record(P, job_spec("a"), LedgerState.RETRYING)
        with capture_logs() as logs:
            proxy.freeze()
            call = asyncio.create_task(ledger.get_many(P, ["a"]))
            await asyncio.sleep(TIMEOUT * 4)  # a hang would be silent here
            assert not call.done()
            assert outage.problem == f"read failed: timed out after {TIMEOUT:g} s"
            proxy.pass_through()
            found = await asyncio.wait_for(call, TIMEOUT * 6)
        assert found["a"].state is LedgerState.RETRYING
        assert [e["error"] for e in events(logs, "ledger.unavailable")] == [
            f"read failed: timed out after {TIMEOUT:g} s"
        ]
        assert len(events(logs, "ledger.recovered")) == 1
        # The timed-out connections were dropped, not handed out again: the ledger works.
        for _ in range(5):
            assert (await ledger.get_many(P, ["a"]))["a"].state is LedgerState.RETRYING


async def test_a_claim_whose_answer_was_lost_is_still_ours(proxy: Proxy, dsn: str) -> None:
    # One connection, its claim statement prepared before the freeze: the next claim is one
    # round trip on it, which reaches the server and commits.
    async with ledger_via(proxy, dsn, Outage(limit=None, **FAST), pool_size=1) as ledger:
        assert attempt_of(await ledger.begin_attempt(P, job_spec("warm-up"))) == 1
        proxy.freeze(answers_only=True)  # the claim reaches the server; its answer does not
        claim = asyncio.ensure_future(ledger.begin_attempt(P, job_spec("a")))
        await asyncio.sleep(TIMEOUT * 2)
        assert await state_of(dsn, "a") == ("submitting", None)  # committed, answer lost
        proxy.pass_through()
        with capture_logs() as logs:
            attempt = await asyncio.wait_for(claim, TIMEOUT * 6)
        # Our own claim, not "held by another worker": nothing was sent under the lost one.
        assert attempt is not None
        assert [e["name"] for e in events(logs, "ledger.claim_answer_lost")] == ["a"]


async def test_a_reset_link_and_a_refused_one_are_waited_out(proxy: Proxy, dsn: str) -> None:
    outage = Outage(limit=None, **FAST)
    async with ledger_via(proxy, dsn, outage) as ledger:
        assert attempt_of(await ledger.begin_attempt(P, job_spec("a"))) == 1
        proxy.refuse()
        proxy.cut()  # every pooled connection is dead now, as after a server restart
        outcome = asyncio.ensure_future(
            ledger.record(P, job_spec("a"), LedgerState.CREATED, job_id=7)
        )
        await asyncio.sleep(0.5)
        assert not outcome.done()
        assert outage.problem is not None
        assert "Connect call failed" in outage.problem or "closed" in outage.problem
        proxy.accept()
        await asyncio.wait_for(outcome, 3)  # the outcome the API gave, written once back
        assert await state_of(dsn, "a") == ("created", 7)
        assert outage.problem is None


async def test_a_daemon_waits_for_an_unreachable_server_at_start(proxy: Proxy, dsn: str) -> None:
    outage = Outage(limit=None, startup_limit=None, **FAST)
    ledger = ledger_via(proxy, dsn, outage)
    proxy.refuse()
    with capture_logs() as logs:
        opening = asyncio.create_task(ledger.open())
        await asyncio.sleep(0.5)
        assert not opening.done()
        proxy.accept()
        await asyncio.wait_for(opening, 3)
    try:
        assert attempt_of(await ledger.begin_attempt(P, job_spec("a"))) == 1
    finally:
        await ledger.close()
    assert len(events(logs, "ledger.unavailable")) == 1
    assert len(events(logs, "ledger.recovered")) == 1


async def test_a_one_shot_run_does_not_wait_to_start(proxy: Proxy, dsn: str) -> None:
    ledger = ledger_via(proxy, dsn, Outage(limit=60.0, startup_limit=0.0))
    proxy.refuse()
    started = time.monotonic()
    with pytest.raises(LedgerUnavailable) as caught:
        await ledger.open()
    assert time.monotonic() - started < 2
    assert str(caught.value).startswith(f"ledger {via(dsn, proxy)}: cannot connect: ")
    assert "\n" not in str(caught.value)


async def test_errors_are_told_apart(dsn: str) -> None:
    # Nobody listening: unavailable, to wait for.
    with pytest.raises(LedgerUnavailable):
        await PostgresLedger("postgresql://postgres@127.0.0.1:1/x", connect_timeout=1).open()
    # A database that does not exist: a setting to fix, not to wait for.
    missing = dsn.rsplit("/", 1)[0] + "/no_such_database_here"
    with pytest.raises(LedgerError) as caught:
        await PostgresLedger(missing, connect_timeout=2).open()
    assert not isinstance(caught.value, LedgerUnavailable)
    # A value the server refuses: one item's fault (the poison-message seam).
    async with PostgresLedger(dsn) as ledger:
        with pytest.raises(LedgerRefusedError, match="0x00"):
            await ledger.begin_attempt(P, job_spec("bad\x00name"))
        assert (
            attempt_of(await ledger.begin_attempt(P, job_spec("good"))) == 1
        )  # the ledger is fine


async def test_close_during_an_outage_does_not_hang(proxy: Proxy, dsn: str) -> None:
    outage = Outage(limit=None, **FAST)
    ledger = ledger_via(proxy, dsn, outage)
    await ledger.open()
    await ledger.get_many(P, ["a"])
    proxy.freeze()
    waiting = asyncio.ensure_future(ledger.record(P, job_spec("a"), LedgerState.RETRYING))
    await asyncio.sleep(TIMEOUT * 2)
    await asyncio.wait_for(ledger.close(), TIMEOUT * 4)
    with pytest.raises(LedgerError):
        await asyncio.wait_for(waiting, 1)
