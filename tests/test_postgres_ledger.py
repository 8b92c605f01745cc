"""PostgresLedger on a real server, a fresh database per test: the protocol, leases, races."""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import asyncpg
import pytest
from structlog.testing import capture_logs

from batchsub.errors import LedgerError, LedgerRefusedError
from batchsub.jobs import ErrorInfo, LedgerRecord, LedgerState
from batchsub.ledgers.postgres import SCHEMA_VERSION, PostgresLedger
from batchsub.protocols import Ledger
from tests.pg import HOST, PORT, fresh_database, postgres_listening
from tests.support import FakeClock, attempt_of, job_spec

pytestmark = pytest.mark.skipif(
    not postgres_listening(), reason=f"no PostgreSQL server listens on {HOST}:{PORT}"
)

P = "project-1"


OpenLedger = Callable[..., Coroutine[Any, Any, PostgresLedger]]


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    async with fresh_database() as url:
        yield url


@pytest.fixture
async def open_ledger(dsn: str) -> AsyncIterator[OpenLedger]:
    """Open PostgresLedgers on the test's database; all are closed at teardown."""
    opened: list[PostgresLedger] = []

    async def factory(**kwargs: Any) -> PostgresLedger:
        kwargs.setdefault("pool_size", 4)
        ledger = PostgresLedger(dsn, **kwargs)
        opened.append(ledger)
        await ledger.open()
        return ledger

    yield factory
    for ledger in opened:
        await ledger.close()


async def all_records(ledger: PostgresLedger, project_id: str | None = None) -> list[LedgerRecord]:
    return [rec async for rec in ledger.records(project_id)]


async def get(ledger: PostgresLedger, name: str, project_id: str = P) -> LedgerRecord:
    return (await ledger.get_many(project_id, [name]))[name]


def test_postgres_ledger_is_a_ledger() -> None:
    ledger: Ledger = PostgresLedger("postgresql://u@h/db")  # mypy checks the protocol
    assert isinstance(ledger, PostgresLedger)


def test_the_dsn_shown_hides_the_password() -> None:
    ledger = PostgresLedger("postgresql://bob:s3cret@db/x")
    assert ledger.dsn == "postgresql://bob:***@db/x"
    assert "s3cret" not in repr(ledger)


async def test_begin_attempt_increments_and_survives_reopen(open_ledger: OpenLedger) -> None:
    clock = FakeClock(1_000.0)
    ledger = await open_ledger(clock=clock, owner="w1")
    assert attempt_of(await ledger.begin_attempt(P, job_spec("a"))) == 1
    await ledger.record(P, job_spec("a"), LedgerState.RETRYING)
    clock.now = 1_005.0
    changed = job_spec("a", source="jobs/renamed.yaml", body=b'{"name":"a","queue_name":"q2"}')
    assert attempt_of(await ledger.begin_attempt(P, changed)) == 2
    await ledger.close()

    reopened = await open_ledger(clock=clock, owner="w1")
    rec = await get(reopened, "a")
    assert (rec.state, rec.attempts, rec.job_id, rec.adopted) == (
        LedgerState.SUBMITTING,
        2,
        None,
        False,
    )
    assert rec.spec() == changed  # source, body and hash follow the latest attempt
    assert (rec.created_at, rec.updated_at) == (1_000.0, 1_005.0)
    await reopened.record(P, changed, LedgerState.UNKNOWN)  # its own claim: released
    assert attempt_of(await reopened.begin_attempt(P, changed)) == 3


async def test_each_call_is_committed_when_it_returns(open_ledger: OpenLedger, dsn: str) -> None:
    ledger = await open_ledger(clock=FakeClock(5.0), lease_seconds=30.0, owner="w1")
    await ledger.begin_attempt(P, job_spec("a"))
    conn = await asyncpg.connect(dsn)  # another session sees only committed rows
    try:
        row = await conn.fetchrow("SELECT state, owner, lease_until FROM batchsub_jobs")
        assert row is not None
        assert tuple(row) == ("submitting", "w1", 35.0)
        await ledger.record(P, job_spec("a"), LedgerState.CREATED, job_id=3)
        row = await conn.fetchrow("SELECT state, job_id, owner, lease_until FROM batchsub_jobs")
        assert row is not None
        assert tuple(row) == ("created", 3, None, None)
    finally:
        await conn.close()


async def test_record_inserts_an_unknown_job_then_get_many(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger(clock=FakeClock(42.0))
    await ledger.record(P, job_spec("adopted"), LedgerState.CREATED, job_id=138, adopted=True)
    await ledger.begin_attempt(P, job_spec("other"))

    found = await ledger.get_many(P, ["adopted", "missing", "adopted"])
    assert list(found) == ["adopted"]
    assert found["adopted"] == LedgerRecord(
        project_id=P,
        name="adopted",
        state=LedgerState.CREATED,
        job_id=138,
        attempts=0,
        error=None,
        source="jobs/adopted.yaml",
        body_hash=job_spec("adopted").body_hash,
        body=job_spec("adopted").body,
        adopted=True,
        created_at=42.0,
        updated_at=42.0,
    )
    assert await ledger.get_many("project-2", ["adopted"]) == {}


async def test_record_keeps_job_id_when_none_and_error_none_clears(
    open_ledger: OpenLedger,
) -> None:
    ledger = await open_ledger()
    spec = job_spec("a")
    await ledger.begin_attempt(P, spec)
    await ledger.record(P, spec, LedgerState.CREATED, job_id=7)
    await ledger.record(P, spec, LedgerState.CREATED, adopted=True)
    rec = await get(ledger, "a")
    assert (rec.state, rec.job_id, rec.attempts, rec.adopted) == (LedgerState.CREATED, 7, 1, True)

    other = job_spec("b")
    error = ErrorInfo(message="quota insufficient", code="DLI.1028", http_status=400)
    await ledger.begin_attempt(P, other)
    await ledger.record(P, other, LedgerState.FAILED, error=error)
    rec = await get(ledger, "b")
    assert (rec.state, rec.error, rec.job_id) == (LedgerState.FAILED, error, None)
    await ledger.record(P, other, LedgerState.RETRYING)
    assert (await get(ledger, "b")).error is None


async def test_created_is_final(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger()
    spec = job_spec("a")
    await ledger.begin_attempt(P, spec)
    await ledger.record(P, spec, LedgerState.CREATED, job_id=7)
    with capture_logs() as logs:
        await ledger.record(P, spec, LedgerState.UNKNOWN, error=ErrorInfo("late answer"))
    assert [e["event"] for e in logs] == ["ledger.record_skipped"]
    assert await ledger.begin_attempt(P, spec) is None  # a redelivered job is not sent again
    rec = await get(ledger, "a")
    assert (rec.state, rec.job_id, rec.attempts, rec.error) == (LedgerState.CREATED, 7, 1, None)


async def test_get_many_over_several_chunks(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger()
    names = [f"job-{i:04d}" for i in range(2_400)]
    await asyncio.gather(*(ledger.begin_attempt(P, job_spec(n)) for n in names[::2]))
    found = await ledger.get_many(P, names)
    assert sorted(found) == names[::2]
    assert all(found[n].name == n for n in found)


async def test_in_doubt_lists_submitting_and_unknown_only(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger()
    for name in ("s", "u", "r", "c", "f"):
        await ledger.begin_attempt(P, job_spec(name))
    await ledger.begin_attempt("project-2", job_spec("elsewhere"))
    await ledger.record(P, job_spec("u"), LedgerState.UNKNOWN)
    await ledger.record(P, job_spec("r"), LedgerState.RETRYING)
    await ledger.record(P, job_spec("c"), LedgerState.CREATED, job_id=1)
    await ledger.record(P, job_spec("f"), LedgerState.FAILED, error=ErrorInfo("no queue"))

    doubtful = await ledger.in_doubt(P)
    assert [(r.name, r.state) for r in doubtful] == [
        ("s", LedgerState.SUBMITTING),  # its own claim, left by a crash: in doubt
        ("u", LedgerState.UNKNOWN),
    ]


async def test_in_doubt_leaves_out_another_workers_live_claim(open_ledger: OpenLedger) -> None:
    clock = FakeClock(1_000.0)
    first = await open_ledger(clock=clock, lease_seconds=60.0, owner="first")
    second = await open_ledger(clock=clock, lease_seconds=60.0, owner="second")
    await first.begin_attempt(P, job_spec("flying"))
    await first.begin_attempt(P, job_spec("lost"))
    await first.record(P, job_spec("lost"), LedgerState.UNKNOWN)

    assert [r.name for r in await second.in_doubt(P)] == ["lost"]
    assert [r.name for r in await first.in_doubt(P)] == ["flying", "lost"]
    clock.now = 1_060.5  # the first worker died: its claim expired
    assert [r.name for r in await second.in_doubt(P)] == ["flying", "lost"]


async def test_records_ordered_by_source_then_name_across_pages(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger(page_size=3)
    specs = [
        job_spec(f"n{i}", source=f"dir/m{i % 4}.yaml#{i % 2}") for i in reversed(range(11))
    ]  # 11 rows: several pages of 3, duplicate sources, written out of order
    specs.append(job_spec("Zed", source="dir/M.yaml"))  # upper case sorts first, as in Python
    for spec in specs:
        await ledger.begin_attempt(P, spec)
    await ledger.begin_attempt("project-0", job_spec("n1", source="dir/m1.yaml#1"))

    mine = await all_records(ledger, P)
    assert [(r.source, r.name) for r in mine] == sorted((s.source, s.name) for s in specs)
    assert {r.project_id for r in mine} == {P}

    everything = await all_records(ledger)
    assert len(everything) == 13
    keys = [(r.source, r.name, r.project_id) for r in everything]
    assert keys == sorted(keys)


async def test_records_of_an_empty_ledger(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger(page_size=2)
    assert await all_records(ledger) == []


async def test_a_live_lease_keeps_other_workers_out_until_it_expires(
    open_ledger: OpenLedger,
) -> None:
    clock = FakeClock(1_000.0)
    first = await open_ledger(clock=clock, lease_seconds=10.0, owner="first")
    second = await open_ledger(clock=clock, lease_seconds=10.0, owner="second")
    spec = job_spec("a")
    assert attempt_of(await first.begin_attempt(P, spec)) == 1
    assert await second.begin_attempt(P, spec) is None
    clock.now = 1_010.0  # the lease runs to 1010 inclusive
    assert await second.begin_attempt(P, spec) is None
    clock.now = 1_010.5  # the first worker died mid-request: the second takes over
    assert attempt_of(await second.begin_attempt(P, spec)) == 2
    assert await first.begin_attempt(P, spec) is None

    # The first worker's late answer must not undo the second's claim...
    with capture_logs() as logs:
        await first.record(P, spec, LedgerState.UNKNOWN, error=ErrorInfo("timed out"))
    assert [e["event"] for e in logs] == ["ledger.record_skipped"]
    rec = await get(first, "a")
    assert (rec.state, rec.attempts, rec.error) == (LedgerState.SUBMITTING, 2, None)
    # ...but a job that exists is a fact whoever found it, and it is never claimed again.
    await first.record(P, spec, LedgerState.CREATED, job_id=55)
    assert (await get(second, "a")).state is LedgerState.CREATED
    await second.record(P, spec, LedgerState.FAILED, error=ErrorInfo("duplicate name"))
    clock.now = 2_000.0
    assert await second.begin_attempt(P, spec) is None
    assert await first.begin_attempt(P, spec) is None
    rec = await get(second, "a")
    assert (rec.state, rec.job_id, rec.attempts, rec.error) == (LedgerState.CREATED, 55, 2, None)


async def test_recording_an_outcome_releases_the_lease_at_once(open_ledger: OpenLedger) -> None:
    clock = FakeClock(1_000.0)
    first = await open_ledger(clock=clock, lease_seconds=60.0, owner="first")
    second = await open_ledger(clock=clock, lease_seconds=60.0, owner="second")
    await first.begin_attempt(P, job_spec("a"))
    await first.record(P, job_spec("a"), LedgerState.RETRYING, error=ErrorInfo("busy"))
    assert attempt_of(await second.begin_attempt(P, job_spec("a"))) == 2
    await second.record(P, job_spec("a"), LedgerState.FAILED, error=ErrorInfo("no queue"))
    # a failed job may be sent again
    assert attempt_of(await first.begin_attempt(P, job_spec("a"))) == 3


async def test_the_same_job_twice_in_one_worker_is_claimed_once(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger()
    results = await asyncio.gather(*(ledger.begin_attempt(P, job_spec("a")) for _ in range(8)))
    assert sorted(map(attempt_of, results), key=str) == [1, *[None] * 7]


async def test_concurrent_workers_claim_each_job_exactly_once(open_ledger: OpenLedger) -> None:
    clock = FakeClock()
    ledgers = [
        await open_ledger(clock=clock, owner=f"w{i}", pool_size=3, lease_seconds=60.0)
        for i in range(10)
    ]
    specs = [job_spec(f"job-{i:02d}") for i in range(50)]
    # Each worker claims every job, starting at a different one, all at once.
    orders = [specs[i * 5 :] + specs[: i * 5] for i in range(len(ledgers))]
    results = await asyncio.gather(
        *(
            asyncio.gather(*(ledger.begin_attempt(P, spec) for spec in order))
            for ledger, order in zip(ledgers, orders, strict=True)
        )
    )
    winners: dict[str, list[str]] = {spec.name: [] for spec in specs}
    for ledger, order, got in zip(ledgers, orders, results, strict=True):
        for spec, claim in zip(order, got, strict=True):
            attempt = attempt_of(claim)
            assert attempt in (1, None)
            if attempt is not None:
                winners[spec.name].append(ledger.owner)
    assert all(len(owners) == 1 for owners in winners.values()), winners
    for rec in await all_records(ledgers[0]):
        assert (rec.state, rec.attempts) == (LedgerState.SUBMITTING, 1)


async def test_workers_opening_together_create_the_schema_once(dsn: str) -> None:
    ledgers = [PostgresLedger(dsn, pool_size=2) for _ in range(5)]
    try:
        await asyncio.gather(*(ledger.open() for ledger in ledgers))
        for i, ledger in enumerate(ledgers):
            assert attempt_of(await ledger.begin_attempt(P, job_spec(f"j{i}"))) == 1
    finally:
        for ledger in ledgers:
            await ledger.close()
    conn = await asyncpg.connect(dsn)
    try:
        meta = await conn.fetch("SELECT key, value FROM batchsub_meta")
        indexes = await conn.fetch(
            "SELECT indexname FROM pg_indexes WHERE tablename = $1", "batchsub_jobs"
        )
        count = await conn.fetchval("SELECT count(*) FROM batchsub_jobs")
    finally:
        await conn.close()
    assert [tuple(r) for r in meta] == [("schema_version", SCHEMA_VERSION)]
    assert "batchsub_jobs_by_state" in {r["indexname"] for r in indexes}
    assert count == 5


async def test_a_newer_schema_is_refused(dsn: str) -> None:
    async with PostgresLedger(dsn) as ledger:
        await ledger.begin_attempt(P, job_spec("a"))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("UPDATE batchsub_meta SET value = $1", SCHEMA_VERSION + 1)
    finally:
        await conn.close()
    with pytest.raises(LedgerError, match="newer than this batchsub") as caught:
        await PostgresLedger(dsn).open()
    assert dsn in str(caught.value)


async def test_close_is_idempotent_and_later_calls_fail(dsn: str) -> None:
    ledger = PostgresLedger(dsn)
    async with ledger:
        assert attempt_of(await ledger.begin_attempt(P, job_spec("a"))) == 1
    await ledger.close()
    with pytest.raises(LedgerError, match="is not open"):
        await ledger.begin_attempt(P, job_spec("b"))
    with pytest.raises(LedgerError, match="is not open"):
        await all_records(ledger)


@pytest.mark.parametrize(
    ("url", "shown", "cause"),
    [
        (f"postgresql://bob:s3cret@{HOST}:1/db", f"bob:***@{HOST}:1/db", "Connect call failed"),
        (
            f"postgresql://nobody:s3cret@{HOST}:{PORT}/test",
            f"nobody:***@{HOST}:{PORT}/test",
            'role "nobody" does not exist',
        ),
        (
            f"postgresql://postgres@{HOST}:{PORT}/no_such_db?password=s3cret",
            "password=***",
            'database "no_such_db" does not exist',
        ),
        ("postgresql://bob:s3cret@db:port/x", "bob:***@db:port/x", "invalid literal"),
        ("mysql://bob:s3cret@db/x", "mysql://bob:***@db/x", "invalid DSN"),
    ],
)
async def test_unusable_dsn_raises_ledger_error_without_the_password(
    url: str, shown: str, cause: str
) -> None:
    ledger = PostgresLedger(url, connect_timeout=5.0)
    with pytest.raises(LedgerError) as caught:
        await ledger.open()
    message = str(caught.value)
    assert not isinstance(caught.value, LedgerRefusedError)  # not a refusal of some job
    assert "s3cret" not in message
    assert shown in message
    assert cause in message
    assert "\n" not in message
    with pytest.raises(LedgerError, match="is not open"):
        await ledger.get_many(P, ["a"])


async def test_values_postgres_refuses_are_refusals_not_outages(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger()
    for spec in (
        job_spec("nul\x00name", body=b"{}"),
        job_spec("sur\ud800", body=b"{}"),
        job_spec("long", source="x" * 200 + secrets.token_hex(1500)),  # an index row > 2704 B
    ):
        with pytest.raises(LedgerRefusedError, match="write failed: "):
            await ledger.begin_attempt(P, spec)
    with pytest.raises(LedgerRefusedError, match="out of int64 range"):
        await ledger.record(P, job_spec("a"), LedgerState.CREATED, job_id=2**70)
    with pytest.raises(LedgerRefusedError, match=r"read failed: .*0x00"):
        await ledger.get_many(P, ["ok", "nul\x00name"])
    # the ledger is fine otherwise
    assert attempt_of(await ledger.begin_attempt(P, job_spec("ok"))) == 1


async def test_text_from_outside_is_stored_escaped(open_ledger: OpenLedger) -> None:
    ledger = await open_ledger()
    spec = job_spec("a", source="amqp:q#\x00\ud800")
    await ledger.begin_attempt(P, spec)
    await ledger.record(P, spec, LedgerState.FAILED, error=ErrorInfo("bad\x00 \ud800", "C\x01"))
    rec = await get(ledger, "a")
    assert rec.source == "amqp:q#\\x00\\ud800"
    assert rec.error == ErrorInfo("bad\\x00 \\ud800", "C\\x01")


async def test_a_lease_held_by_a_dead_process_of_this_host_ends_at_once(
    open_ledger: OpenLedger,
) -> None:
    # A worker killed with SIGKILL leaves its lease; waiting for it to expire would only
    # delay its jobs. A live process's lease, or another host's, is still respected.
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    here = socket.gethostname()
    dead = await open_ledger(owner=f"{here}:{gone.pid}:dead", lease_seconds=600.0)
    alive = await open_ledger(owner=f"{here}:{os.getpid()}:other", lease_seconds=600.0)
    elsewhere = await open_ledger(owner=f"not-{here}:{gone.pid}:x", lease_seconds=600.0)
    taker = await open_ledger(lease_seconds=600.0)
    for holder, name in ((dead, "a"), (alive, "b"), (elsewhere, "c")):
        assert attempt_of(await holder.begin_attempt(P, job_spec(name))) == 1
    assert attempt_of(await taker.begin_attempt(P, job_spec("a"))) == 2
    assert await taker.begin_attempt(P, job_spec("b")) is None
    assert await taker.begin_attempt(P, job_spec("c")) is None
