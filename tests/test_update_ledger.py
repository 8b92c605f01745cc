"""The UpdateLedger contract, run against every backend: memory, SQLite, real PostgreSQL.

The SQL ledgers apply the memory ledger's own transitions (``ledgers._updates``) inside one
transaction per call, so each test here passes on all three; ``done`` also makes the body
the jobs row's body in the SQL ledgers (the memory ledger keeps it as ``applied``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from batchsub.jobs import LedgerState, UpdateRecord, UpdateState, UpdateStep
from batchsub.ledgers import postgres, sqlite
from batchsub.ledgers.memory_update import MemoryUpdateLedger
from batchsub.ledgers.postgres import PostgresLedger
from batchsub.ledgers.sqlite import SqliteLedger
from batchsub.protocols import UpdateLedger
from tests.apply_support import spec_of
from tests.pg import fresh_database, postgres_listening
from tests.support import FakeClock

P = "proj"
BACKENDS = ["memory", "sqlite", "postgres"]
NEW = {"name": "a", "queue_name": "q1", "cu_number": 4}


@dataclass
class Backend:
    """One UpdateLedger under test, and (SQL) the body its jobs row holds."""

    kind: str
    ledger: UpdateLedger
    jobs_body: Callable[[str], Coroutine[Any, Any, bytes | None]]


MakeBackend = Callable[..., Coroutine[Any, Any, Backend]]


@pytest.fixture(params=BACKENDS)
async def make(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[MakeBackend]:
    kind: str = request.param
    closing: list[SqliteLedger | PostgresLedger] = []
    async with _database(kind) as dsn:

        async def factory(clock: FakeClock) -> Backend:
            if kind == "memory":
                memory = MemoryUpdateLedger(clock=clock)

                async def applied(name: str) -> bytes | None:
                    found = memory.applied.get((P, name))
                    return found[1] if found else None

                return Backend(kind, memory, applied)
            sql: SqliteLedger | PostgresLedger
            if kind == "sqlite":
                sql = SqliteLedger(tmp_path / "batchsub.db", clock=clock)
            else:
                sql = PostgresLedger(dsn, clock=clock, pool_size=4)
            await sql.open()
            closing.append(sql)
            created = spec_of({"name": "a", "queue_name": "q1", "cu_number": 2})
            await sql.record(P, created, LedgerState.CREATED, job_id=7)

            async def body(name: str) -> bytes | None:
                found = await sql.get_many(P, [name])
                return found[name].body if name in found else None

            return Backend(kind, sql, body)

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


def intent(name: str = "a", job_id: int = 7, restart: bool = True) -> UpdateRecord:
    spec = spec_of({**NEW, "name": name})
    put = orjson.dumps({"cu_number": 4})
    return UpdateRecord(
        name, job_id, UpdateState.PLANNED, spec.body, spec.body_hash, put, restart, True
    )


def step(state: UpdateState, name: str = "a", job_id: int = 7, **kw: Any) -> UpdateStep:
    return UpdateStep(name, job_id, state, **kw)


async def test_every_step_of_a_restart_is_recorded_then_done_sets_the_body(
    make: MakeBackend,
) -> None:
    clock = FakeClock(100.0)
    b = await make(clock)
    assert await b.ledger.update_records(P) == {}
    assert await b.ledger.begin_update(P, [intent()]) == {"a"}
    row = (await b.ledger.update_records(P))["a"]
    assert (row.state, row.attempts, row.restart, row.savepoint) == (
        UpdateState.PLANNED, 0, True, True,
    )  # fmt: skip
    assert row.body == spec_of(NEW).body and orjson.loads(row.put_body) == {"cu_number": 4}
    for at, state in enumerate(
        [UpdateState.STOPPING, UpdateState.STOPPED, UpdateState.UPDATING, UpdateState.UPDATED,
         UpdateState.RESTARTING], start=101,
    ):  # fmt: skip
        clock.now = float(at)
        await b.ledger.record_update(P, [step(state, sent=state.value.endswith("ing"))])
        row = (await b.ledger.update_records(P, ["a"]))["a"]
        assert (row.state, row.updated_at) == (state, float(at))
        assert row.attempts == (1 if state.value.endswith("ing") else 0)
    await b.ledger.record_update(P, [step(UpdateState.RESTARTING, sent=True)])
    assert (await b.ledger.update_records(P, ["a"]))["a"].attempts == 2  # sent again
    assert b.kind == "memory" or await b.jobs_body("a") != spec_of(NEW).body
    await b.ledger.record_update(P, [step(UpdateState.DONE)])
    assert await b.ledger.update_records(P) == {}  # nothing unfinished
    assert (await b.ledger.update_records(P, ["a"]))["a"].state is UpdateState.DONE
    assert await b.jobs_body("a") == spec_of(NEW).body


async def test_an_unfinished_update_holds_the_name(make: MakeBackend) -> None:
    b = await make(FakeClock(100.0))
    assert await b.ledger.begin_update(P, [intent()]) == {"a"}
    await b.ledger.record_update(P, [step(UpdateState.STOPPING, sent=True)])
    assert await b.ledger.begin_update(P, [intent()]) == set()
    assert (await b.ledger.update_records(P))["a"].state is UpdateState.STOPPING
    await b.ledger.record_update(P, [step(UpdateState.FAILED, error="refused")])
    row = (await b.ledger.update_records(P, ["a"]))["a"]
    assert (row.state, row.error) == (UpdateState.FAILED, "refused")
    assert await b.ledger.begin_update(P, [intent()]) == {"a"}  # a failed one is replaced
    row = (await b.ledger.update_records(P, ["a"]))["a"]
    assert (row.state, row.error, row.attempts) == (UpdateState.PLANNED, None, 0)


async def test_a_step_for_another_job_of_the_name_is_skipped(make: MakeBackend) -> None:
    b = await make(FakeClock(100.0))
    assert await b.ledger.begin_update(P, [intent()]) == {"a"}
    await b.ledger.record_update(
        P, [step(UpdateState.DONE, job_id=8), step(UpdateState.DONE, "zz")]
    )
    assert (await b.ledger.update_records(P))["a"].state is UpdateState.PLANNED


async def test_two_workers_claim_one_update_between_them(make: MakeBackend) -> None:
    b = await make(FakeClock(100.0))
    claims = await asyncio.gather(*(b.ledger.begin_update(P, [intent()]) for _ in range(4)))
    assert sorted(n for c in claims for n in c) == ["a"]


async def test_a_version_4_sqlite_ledger_gains_the_updates_table(tmp_path: Path) -> None:
    path = tmp_path / "batchsub.db"
    with sqlite3.connect(path) as conn:
        for version in range(4):
            conn.executescript(sqlite._MIGRATIONS[version])
        conn.execute("PRAGMA user_version = 4")
    conn.close()
    async with SqliteLedger(path) as ledger:
        assert await ledger.begin_update(P, [intent()]) == {"a"}
    with sqlite3.connect(path) as conn:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        with pytest.raises(sqlite3.IntegrityError):  # the CHECK holds
            conn.execute("UPDATE updates SET state = 'bogus'")
    conn.close()
    assert version == sqlite.SCHEMA_VERSION == 5


@pytest.mark.skipif(not postgres_listening(), reason="no PostgreSQL server listens")
async def test_a_version_2_postgres_ledger_gains_the_updates_table() -> None:
    async with fresh_database() as dsn:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(postgres._MIGRATIONS[0])
            await conn.execute(postgres._MIGRATIONS[1])
            await conn.execute(
                "CREATE TABLE batchsub_meta (key text PRIMARY KEY, value integer NOT NULL);"
                " INSERT INTO batchsub_meta VALUES ('schema_version', 2)"
            )
            async with PostgresLedger(dsn, pool_size=2) as ledger:
                assert await ledger.begin_update(P, [intent()]) == {"a"}
            version = await conn.fetchval("SELECT value FROM batchsub_meta")
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute("UPDATE batchsub_updates SET state = 'bogus'")
        finally:
            await conn.close()
    assert version == postgres.SCHEMA_VERSION == 3


async def test_forget_missing_moves_only_a_created_row_of_that_job(make: MakeBackend) -> None:
    b = await make(FakeClock(100.0))
    assert await b.ledger.forget_missing(P, [("a", 7)]) == {"a"}
    if b.kind == "memory":
        return  # no jobs rows: what it records is the SQL ledgers' to show
    sql: Any = b.ledger
    row = (await sql.get_many(P, ["a"]))["a"]
    assert (row.state, row.job_id) == (LedgerState.RETRYING, None)
    assert await b.ledger.forget_missing(P, [("a", 7)]) == set()  # not created any more
    await sql.record(P, spec_of(NEW), LedgerState.CREATED, job_id=9)
    assert await b.ledger.forget_missing(P, [("a", 7)]) == set()  # another job now


async def test_a_resume_claims_an_unfinished_update_once(make: MakeBackend) -> None:
    clock = FakeClock(100.0)
    b = await make(clock)
    assert await b.ledger.claim_updates(P, ["a"]) == set()  # nothing unfinished
    assert await b.ledger.begin_update(P, [intent()]) == {"a"}
    await b.ledger.record_update(P, [step(UpdateState.STOPPING, sent=True)])
    if b.kind != "postgres":  # one writer: every unfinished one is its to resume
        assert await b.ledger.claim_updates(P, ["a"]) == {"a"}
        return
    assert await b.ledger.claim_updates(P, ["a"]) == set()  # the step's lease is live
    clock.now += 10_000.0  # the worker died: its lease ran out
    claims = await asyncio.gather(*(b.ledger.claim_updates(P, ["a"]) for _ in range(3)))
    assert sorted(n for c in claims for n in c) == ["a"]
    await b.ledger.record_update(P, [step(UpdateState.DONE)])
    clock.now += 10_000.0
    assert await b.ledger.claim_updates(P, ["a"]) == set()  # finished
