"""The StartLedger contract, run against every backend: memory, SQLite, real PostgreSQL.

The state machine is the ``StartLedger`` protocol's; the SQL ledgers apply the memory
ledger's own transitions (``ledgers._starts``) inside one transaction per call, so each test
here must pass on all three. The SQL ledgers record a start only on the row of a job they
know, so each test first records its jobs as created (a no-op for the memory ledger).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from batchsub.jobs import (
    LedgerState,
    StartIntent,
    StartOutcome,
    StartRecord,
    StartState,
    StatusSeen,
)
from batchsub.ledgers import postgres, sqlite
from batchsub.ledgers.memory import MemoryStartLedger
from batchsub.ledgers.postgres import PostgresLedger
from batchsub.ledgers.sqlite import SqliteLedger
from batchsub.protocols import StartLedger
from tests.pg import fresh_database, postgres_listening
from tests.support import FakeClock, job_spec

P = "proj"
BACKENDS = ["memory", "sqlite", "postgres"]


@dataclass
class Backend:
    """One StartLedger under test, and how to give it the jobs' rows."""

    kind: str
    ledger: StartLedger
    jobs: Callable[[Sequence[tuple[str, int]]], Coroutine[Any, Any, None]]

    async def rows(self, project_id: str, *names: str) -> dict[str, StartRecord]:
        return await self.ledger.start_records(project_id, list(names or ("a", "b")))

    async def row(self, name: str = "a") -> StartRecord:
        return (await self.rows(P, name))[name]


MakeBackend = Callable[..., Coroutine[Any, Any, Backend]]


@pytest.fixture(params=BACKENDS)
async def make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeBackend]:
    """Open ledgers of the test's backend (all on one file or database); closed at teardown."""
    kind: str = request.param
    closing: list[SqliteLedger | PostgresLedger] = []
    async with _database(kind) as dsn:

        async def factory(clock: FakeClock, lease_seconds: float | None = None) -> Backend:
            if kind == "memory":
                memory = MemoryStartLedger(clock=clock, lease_seconds=lease_seconds)

                async def nothing(jobs: Sequence[tuple[str, int]]) -> None:
                    return None

                return Backend(kind, memory, nothing)
            sql: SqliteLedger | PostgresLedger
            if kind == "sqlite":
                sql = SqliteLedger(tmp_path / "batchsub.db", clock=clock)
            else:
                sql = PostgresLedger(
                    dsn, clock=clock, lease_seconds=lease_seconds or 120.0, pool_size=4
                )
            await sql.open()
            closing.append(sql)

            async def created(jobs: Sequence[tuple[str, int]]) -> None:
                for name, job_id in jobs:
                    await sql.record(P, job_spec(name), LedgerState.CREATED, job_id=job_id)

            return Backend(kind, sql, created)

        yield factory
        for ledger in closing:
            await ledger.close()


def _database(kind: str) -> Any:
    if kind != "postgres":
        return _no_database()
    if not postgres_listening():
        pytest.skip("no PostgreSQL server listens")
    return fresh_database()


class _no_database:
    async def __aenter__(self) -> str:
        return ""

    async def __aexit__(self, *exc: object) -> None:
        return None


def intent(
    name: str = "a", job_id: int = 7, attempts: int = 0, before: str = "job_init"
) -> StartIntent:
    return StartIntent(name, job_id, before, attempts)


async def test_intent_then_started_then_running_then_failure(make: MakeBackend) -> None:
    clock = FakeClock(100.0)
    b = await make(clock)
    await b.jobs([("a", 7)])
    assert await b.rows(P) == {}
    assert await b.ledger.begin_start(P, [intent()]) == {"a"}
    row = await b.row()
    assert (row.state, row.attempts, row.last_status, row.updated_at) == (
        StartState.STARTING,
        1,
        "job_init",
        100.0,
    )
    clock.now = 101.0
    await b.ledger.record_start(P, [StartOutcome("a", 7, StartState.STARTED)])
    clock.now = 103.0
    await b.ledger.record_status(P, [StatusSeen("a", 7, "job_running")])
    clock.now = 104.0
    await b.ledger.record_status(P, [StatusSeen("a", 7, "job_running")])
    row = await b.row()
    assert (row.state, row.started_at, row.running_at, row.status_seen_at) == (
        StartState.STARTED,
        101.0,
        103.0,
        104.0,
    )
    await b.ledger.record_status(P, [StatusSeen("a", 7, "job_running_exception", "boom")])
    row = await b.row()
    assert (row.state, row.error, row.last_status) == (
        StartState.START_FAILED,
        "boom",
        "job_running_exception",
    )
    # A new attempt clears what the last one left.
    assert await b.ledger.begin_start(P, [intent(attempts=1, before="job_running_exception")])
    row = await b.row()
    assert (row.state, row.attempts, row.error, row.started_at, row.running_at) == (
        StartState.STARTING,
        2,
        None,
        None,
        None,
    )


async def test_begin_is_a_compare_and_set_on_the_attempts(make: MakeBackend) -> None:
    b = await make(FakeClock())
    await b.jobs([("a", 7), ("b", 8)])
    assert await b.ledger.begin_start(P, [intent(), intent("b", 8)]) == {"a", "b"}
    await b.ledger.record_start(P, [StartOutcome("a", 7, None), StartOutcome("b", 8, None)])
    # A second worker that read the rows before the first began: claims nothing.
    assert await b.ledger.begin_start(P, [intent(), intent("b", 8)]) == set()
    assert await b.ledger.begin_start(P, [intent(attempts=1)]) == {"a"}
    assert (await b.row()).attempts == 2
    # The same name twice in one call is claimed once.
    await b.ledger.record_start(P, [StartOutcome("a", 7, None)])
    assert await b.ledger.begin_start(P, [intent(attempts=2), intent(attempts=2)]) == {"a"}
    assert (await b.row()).attempts == 3


@pytest.mark.parametrize("make", ["memory", "postgres"], indirect=True)
async def test_a_live_claim_holds_a_starting_row_and_an_expired_one_does_not(
    make: MakeBackend,
) -> None:
    clock = FakeClock(0.0)
    b = await make(clock, lease_seconds=30.0)
    await b.jobs([("a", 7)])
    assert await b.ledger.begin_start(P, [intent()]) == {"a"}
    assert (await b.row()).claim_until == 30.0
    clock.now = 29.0
    assert await b.ledger.begin_start(P, [intent(attempts=1)]) == set()
    clock.now = 31.0
    assert await b.ledger.begin_start(P, [intent(attempts=1)]) == {"a"}
    await b.ledger.record_start(P, [StartOutcome("a", 7, StartState.STARTED)])
    assert (await b.row()).claim_until is None


async def test_not_started_clears_the_state_and_statuses_of_others_are_kept(
    make: MakeBackend,
) -> None:
    b = await make(FakeClock())
    await b.jobs([("a", 7), ("b", 8)])
    await b.ledger.begin_start(P, [intent()])
    await b.ledger.record_start(P, [StartOutcome("a", 7, None, "not started: run interrupted")])
    row = await b.row()
    assert (row.state, row.error) == (None, "not started: run interrupted")
    # A job batchsub never started: its status is recorded, a failure does not touch its state.
    await b.ledger.record_status(P, [StatusSeen("b", 8, "job_submit_fail", "someone else's")])
    other = await b.row("b")
    assert (other.state, other.last_status, other.error, other.running_at) == (
        None,
        "job_submit_fail",
        None,
        None,
    )


async def test_a_new_job_under_the_same_name_starts_from_nothing(make: MakeBackend) -> None:
    b = await make(FakeClock())
    await b.jobs([("a", 7)])
    await b.ledger.begin_start(P, [intent()])
    await b.ledger.record_start(P, [StartOutcome("a", 7, StartState.START_FAILED, "x")])
    assert await b.ledger.begin_start(P, [intent(job_id=9)]) == {"a"}  # attempts counted anew
    row = await b.row()
    assert (row.job_id, row.attempts) == (9, 1)
    assert await b.rows("other", "a") == {}


async def test_start_records_survive_a_reopen_and_show_in_the_records(
    make: MakeBackend, tmp_path: Path
) -> None:
    clock = FakeClock(5.0)
    b = await make(clock)
    if b.kind == "memory":
        pytest.skip("the memory ledger keeps nothing")
    await b.jobs([("a", 7), ("b", 8)])
    await b.ledger.begin_start(P, [intent()])
    await b.ledger.record_start(P, [StartOutcome("a", 7, StartState.STARTED, None, "job_running")])
    sql = b.ledger
    assert isinstance(sql, SqliteLedger | PostgresLedger)
    await sql.close()
    await sql.open()
    records = {rec.name: rec async for rec in sql.records(P)}
    assert records["b"].start is None  # never touched: "never started"
    start = records["a"].start
    assert start is not None
    assert (start.state, start.started_at, start.running_at, start.last_status) == (
        StartState.STARTED,
        5.0,
        5.0,
        "job_running",
    )
    assert (await sql.get_many(P, ["a"]))["a"].start == start


async def test_a_start_of_a_job_the_sql_ledger_does_not_know_is_not_claimed(
    make: MakeBackend,
) -> None:
    b = await make(FakeClock())
    if b.kind == "memory":
        pytest.skip("the memory ledger has no jobs rows")
    assert await b.ledger.begin_start(P, [intent("ghost")]) == set()
    await b.ledger.record_status(P, [StatusSeen("ghost", 1, "job_running")])
    assert await b.rows(P, "ghost") == {}


async def test_text_from_outside_is_stored_escaped(make: MakeBackend) -> None:
    b = await make(FakeClock())
    if b.kind == "memory":
        pytest.skip("nothing to escape in a dict")
    await b.jobs([("a", 7)])
    await b.ledger.begin_start(P, [intent()])
    await b.ledger.record_start(P, [StartOutcome("a", 7, StartState.START_FAILED, "bad\x00\ud800")])
    assert "\x00" not in ((await b.row()).error or "")


def test_the_memory_ledger_counts_its_writes_and_calls_on_write() -> None:
    seen: list[str] = []
    ledger = MemoryStartLedger(on_write=seen.append)

    async def go() -> None:
        await ledger.begin_start(P, [intent()])
        await ledger.record_start(P, [StartOutcome("a", 7, StartState.STARTED)])
        await ledger.record_status(P, [StatusSeen("a", 7, "job_running")])

    asyncio.run(go())
    assert seen == ["begin_start", "record_start", "record_status"]
    assert ledger.writes == 3
    assert set(ledger.rows(P)) == {"a"}


# --- SQL only: concurrency and migrations ----------------------------------------------------


@pytest.mark.skipif(not postgres_listening(), reason="no PostgreSQL server listens")
async def test_concurrent_postgres_workers_claim_each_start_once() -> None:
    async with fresh_database() as dsn:
        workers = [PostgresLedger(dsn, owner=f"w{i}", pool_size=4) for i in range(4)]
        for w in workers:
            await w.open()
        try:
            names = [f"j{i}" for i in range(40)]
            for i, name in enumerate(names):
                await workers[0].record(P, job_spec(name), LedgerState.CREATED, job_id=i)
            intents = [intent(name, i) for i, name in enumerate(names)]
            # Each worker read the rows (attempts 0) and claims them all, in its own order.
            claims = await asyncio.gather(
                *(w.begin_start(P, intents[k:] + intents[:k]) for k, w in enumerate(workers))
            )
        finally:
            for w in workers:
                await w.close()
    assert sorted(n for c in claims for n in c) == sorted(names)


async def test_a_version_3_sqlite_ledger_gains_the_start_columns(tmp_path: Path) -> None:
    path = tmp_path / "batchsub.db"
    row = (
        "INSERT INTO jobs VALUES (?, ?, 'created', ?, 1, NULL, NULL, NULL, ?, 'h', ?, 0, 1.0, 2.0)"
    )
    with sqlite3.connect(path) as conn:
        for version in (0, 1, 2):
            conn.executescript(sqlite._MIGRATIONS[version])
        conn.execute("PRAGMA user_version = 3")
        conn.execute(row, (P, "a", 7, "jobs/a.yaml", b'{"name":"a"}'))
    conn.close()
    async with SqliteLedger(path) as ledger:
        before = (await ledger.get_many(P, ["a"]))["a"]
        assert before.start is None and before.job_id == 7  # read as "never started"
        assert await ledger.begin_start(P, [intent()]) == {"a"}
        assert (await ledger.start_records(P, ["a"]))["a"].state is StartState.STARTING
    with sqlite3.connect(path) as conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        with pytest.raises(sqlite3.IntegrityError):  # the CHECK holds
            conn.execute("UPDATE jobs SET start_state = 'bogus'")
    conn.close()
    assert version == sqlite.SCHEMA_VERSION == 5


@pytest.mark.skipif(not postgres_listening(), reason="no PostgreSQL server listens")
async def test_a_version_1_postgres_ledger_gains_the_start_columns() -> None:
    async with fresh_database() as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(postgres._MIGRATIONS[0])
            await conn.execute(
                "CREATE TABLE batchsub_meta (key text PRIMARY KEY, value integer NOT NULL);"
                " INSERT INTO batchsub_meta VALUES ('schema_version', 1)"
            )
            await conn.execute(
                "INSERT INTO batchsub_jobs (project_id, name, state, job_id, attempts, source,"
                " body_hash, body, created_at, updated_at)"
                " VALUES ($1, 'a', 'created', 7, 1, 'jobs/a.yaml', 'h', '{}', 1.0, 2.0)",
                P,
            )
            async with PostgresLedger(dsn, pool_size=2) as ledger:
                before = (await ledger.get_many(P, ["a"]))["a"]
                assert before.start is None and before.job_id == 7
                assert await ledger.begin_start(P, [intent()]) == {"a"}
            version = await conn.fetchval("SELECT value FROM batchsub_meta")
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute("UPDATE batchsub_jobs SET start_state = 'bogus'")
        finally:
            await conn.close()
    assert version == postgres.SCHEMA_VERSION == 3
