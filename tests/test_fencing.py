"""Fencing: a create leaves only while its claim is live, and a stale worker's writes never win.

The claim rule runs on fake clocks (the limiter's pacing waits move them, so a long wait
takes no time) against real PostgreSQL and the simulator over loopback HTTP; then in real
time, at a tiny ``--rate``, with another worker taking over a claim that ran out.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from batchsub.auth import TokenAuth
from batchsub.client import DliClient
from batchsub.errors import ConfigError
from batchsub.jobs import Claim, JobSpec, LedgerState, Outcome
from batchsub.ledgers.postgres import PostgresLedger
from batchsub.ledgers.sqlite import SqliteLedger
from batchsub.limiter import RateLimiter
from batchsub.protocols import Ledger
from batchsub.report import RunAccount
from batchsub.retry import RetryPolicy
from batchsub.runner import run_source
from batchsub.settings import load_settings
from batchsub.simulator import RunningSimulator, SimulatorConfig
from batchsub.submitter import Submitter
from tests.pg import fresh_database, postgres_listening
from tests.run_support import ListSource, make_submitter, on_ledger
from tests.sim_support import simulator_with
from tests.support import PROJECT, TOKEN, FakeClock, SimulatorFactory, fast_settings, job_spec

needs_postgres = pytest.mark.skipif(not postgres_listening(), reason="PostgreSQL is not listening")

LEASE = 20.0
WINDOW = 5.0  # what a claim must still cover when its create leaves


def test_a_claim_covers_a_request_only_with_time_to_spare() -> None:
    claim = Claim(3, deadline=100.0)
    assert claim.covers(60.0, 39.9)
    assert not claim.covers(60.0, 40.0)  # the request could outlast the claim by a hair
    assert not claim.covers(120.0, 0.0)
    assert Claim(1).covers(1e12, 1e9)  # a single-writer ledger's claim never expires


SHARED = {"ledger": "postgresql://postgres@127.0.0.1/batchsub"}


def test_the_lease_is_a_setting_that_must_cover_one_request() -> None:
    assert load_settings({}).lease_seconds == 70.0  # 2 x timeout + 10, as before
    assert load_settings({**SHARED, "timeout": 5.0, "lease": 20.0}).lease_seconds == 20.0
    assert load_settings({"in_doubt_grace": 60.0}).lease_seconds == 101.0  # covers the window
    expected = (
        r"lease: 20 s cannot cover one request: a claim must outlast timeout \(30\)"
        r" \+ in_doubt_grace \(5\) \+ 1 s = 36 s; raise --lease or lower --timeout"
    )
    with pytest.raises(ConfigError, match=expected):
        load_settings({**SHARED, "lease": 20.0, "timeout": 30.0})  # both asked, at odds
    # A SQLite ledger has one writer and no lease: nothing to cover, nothing changed.
    assert load_settings({"lease": 20.0, "timeout": 30.0}).timeout == 30.0


def test_a_lease_alone_shortens_the_default_timeout_to_fit_and_says_so() -> None:
    fitted = load_settings({**SHARED, "lease": 20.0})
    assert (fitted.timeout, fitted.lease_seconds) == (13.0, 20.0)
    assert fitted.claim_window < fitted.lease_seconds
    assert fitted.notes == [
        "timeout lowered from 30 s to 13 s to fit the 20 s lease (a claim must outlast one"
        " request: timeout + in_doubt_grace + 1 s)"
    ]
    assert load_settings({**SHARED, "lease": 20.0, "in_doubt_grace": 1.0}).timeout == 17.0
    assert load_settings({**SHARED, "lease": 120.0}).timeout == 30.0  # fits: untouched
    assert load_settings({**SHARED, "lease": 120.0}).notes == []
    assert load_settings({"lease": 20.0}).notes == []  # SQLite: the lease is not used
    with pytest.raises(ConfigError, match="lease: 6 s cannot cover one request"):
        load_settings({**SHARED, "lease": 6.0})  # not even a 1 s request fits


def test_a_lease_too_short_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from batchsub.cli import main

    flags = ["--ledger", SHARED["ledger"], "--lease", "20", "--timeout", "30"]
    assert main(["run", str(tmp_path), "--simulator", *flags]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "batchsub: error: invalid setting: lease: 20 s cannot cover one request: a claim must"
        " outlast timeout (30) + in_doubt_grace (5) + 1 s = 36 s; raise --lease or lower --timeout"
    ]
    assert main(["config", "show", "--lease", "20", "--timeout", "10"]) == 0
    assert "lease = 20.0" in capsys.readouterr().out


class Clocks:
    """A wall clock (leases, shared by every ledger) and a monotonic one (claim deadlines)."""

    def __init__(self) -> None:
        self.wall = FakeClock(1_000.0)
        self.mono = FakeClock(0.0)
        self.on_sleep: Callable[[], Awaitable[None]] | None = None

    async def sleep(self, delay: float) -> None:
        """The limiter's pacing wait: time passes at once, and whatever else happens then."""
        self.wall.now += max(delay, 0.0)
        self.mono.now += max(delay, 0.0)
        if self.on_sleep is not None:
            await self.on_sleep()
        await asyncio.sleep(0)


async def run_paced(
    sim_url: str, ledger: Ledger, clocks: Clocks, specs: list[JobSpec], *, rate: float
) -> tuple[ListSource, Submitter]:
    """The submitter as ``run`` wires it, on the fake clocks, paced at ``rate``."""
    limiter = RateLimiter(rate, clock=clocks.mono, sleep=clocks.sleep)
    policy = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.05)
    source = ListSource(list(specs))
    async with aiohttp.ClientSession() as session:
        client = DliClient(session, sim_url, PROJECT, TokenAuth(TOKEN), timeout=2.0)
        submitter = make_submitter(
            client,
            ledger,
            limiter,
            policy=policy,
            rng=random.Random(1),
            in_doubt_grace=0.0,
            claim_window=WINDOW,
            monotonic=clocks.mono,
        )
        await submitter.run(source)
    return source, submitter


@contextlib.asynccontextmanager
async def two_workers(clocks: Clocks) -> AsyncIterator[tuple[PostgresLedger, PostgresLedger]]:
    """Two ledger owners on one fresh database: "us", and a rival that may take jobs over."""
    async with fresh_database() as dsn:
        ledgers = [
            PostgresLedger(
                dsn, owner=owner, lease_seconds=LEASE, clock=clocks.wall, monotonic=clocks.mono
            )
            for owner in ("us", "rival")
        ]
        for ledger in ledgers:
            await ledger.open()
        try:
            yield ledgers[0], ledgers[1]
        finally:
            for ledger in ledgers:
                await ledger.close()


async def lease_until(ledger: PostgresLedger, name: str) -> tuple[str | None, float | None, int]:
    pool = ledger._require_pool()  # the test reads the row as another client would
    row = await pool.fetchrow(
        "SELECT owner, lease_until, attempts FROM batchsub_jobs WHERE name = $1", name
    )
    assert row is not None
    return row["owner"], row["lease_until"], row["attempts"]


# At 0.05 requests/s the second job's turn comes 20.4 s after the first: past its lease.
SLOW_RATE = 0.05


@contextlib.asynccontextmanager
async def ledger_of(kind: str, clocks: Clocks, tmp_path: Path) -> AsyncIterator[Ledger]:
    if kind == "sqlite":
        async with SqliteLedger(tmp_path / "ledger.db") as sqlite:
            yield sqlite
        return
    if not postgres_listening():
        pytest.skip("PostgreSQL is not listening")
    async with two_workers(clocks) as (ours, _):
        yield ours


@pytest.mark.parametrize(
    ("kind", "rate", "claim_events"),
    [
        # At 0.05 requests/s the second job's turn comes 20.4 s after the first: past its
        # lease, so its claim is renewed first (the first job went at once, its claim fresh).
        ("postgres", SLOW_RATE, ["job.claim_renewed"]),
        # At 0.1 requests/s it comes after 10.2 s: within 20 - 5, no renewal needed.
        ("postgres", 0.1, []),
        # A SQLite claim never expires: no renewal ever, however long the wait.
        ("sqlite", 0.001, []),
    ],
)
async def test_a_job_that_waited_renews_its_claim_only_when_it_would_not_cover_the_request(
    kind: str, rate: float, claim_events: list[str], simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator()
    clocks = Clocks()
    async with ledger_of(kind, clocks, tmp_path) as ledger:
        with capture_logs() as logs:
            source, submitter = await run_paced(
                sim.url, ledger, clocks, [job_spec("first"), job_spec("second")], rate=rate
            )
    assert {n: r.outcome for n, r in source.results.items()} == {
        "first": Outcome.CREATED,
        "second": Outcome.CREATED,
    }
    assert submitter.creates_sent == 2
    assert [e["event"] for e in logs if e["event"].startswith("job.claim")] == claim_events


@needs_postgres
async def test_a_job_whose_claim_was_taken_over_while_it_waited_is_never_sent(
    simulator: SimulatorFactory,
) -> None:
    sim = await simulator(duplicate_names="accept")  # only batchsub can prevent a second job
    clocks = Clocks()
    async with two_workers(clocks) as (ours, rival):
        second = job_spec("second")

        async def rival_takes_over() -> None:
            # Our claim ran out while the job waited for its turn: another worker claims it
            # (as after a freeze of ours) and holds it, its create in flight.
            if clocks.wall.now > 1_000.0 + LEASE and clocks.on_sleep is not None:
                clocks.on_sleep = None
                assert await rival.begin_attempt(PROJECT, second) is not None

        clocks.on_sleep = rival_takes_over
        with capture_logs() as logs:
            source, submitter = await run_paced(
                sim.url, ours, clocks, [job_spec("first"), second], rate=SLOW_RATE
            )
        owner, _, attempts = await lease_until(ours, "second")

    assert sim.store.requests_by_name == {"first": 1}  # "second" never left
    assert submitter.creates_sent == 1
    result = source.results["second"]
    assert (result.outcome, result.error) == (
        Outcome.UNRESOLVED,
        "claimed by another batchsub worker",
    )
    assert (owner, attempts) == ("rival", 2)  # the rival's claim stands
    lost = [e for e in logs if e["event"] == "job.claim_lost"]
    assert [e["reason"] for e in lost] == ["taken over"]


@needs_postgres
async def test_a_claim_renewed_too_late_is_not_used(simulator: SimulatorFactory) -> None:
    sim = await simulator()
    clocks = Clocks()

    class SlowToRenew(PostgresLedger):
        async def _renew(self, project_id: str, job: JobSpec, claim: Claim) -> Claim | None:
            renewed = await super()._renew(project_id, job, claim)
            clocks.mono.now += LEASE  # its answer took longer than the lease itself
            return renewed

    async with fresh_database() as dsn:
        ledger = SlowToRenew(dsn, lease_seconds=LEASE, clock=clocks.wall, monotonic=clocks.mono)
        await ledger.open()
        try:
            with capture_logs() as logs:
                source, _ = await run_paced(
                    sim.url, ledger, clocks, [job_spec("a"), job_spec("b")], rate=SLOW_RATE
                )
        finally:
            await ledger.close()
    assert sim.store.requests_by_name == {"a": 1}
    assert source.results["b"].outcome is Outcome.UNRESOLVED  # given back, to be tried again
    assert "the ledger answered too late" in [
        e.get("reason") for e in logs if e["event"] == "job.claim_lost"
    ]


async def test_a_sqlite_claim_never_expires(tmp_path: Path) -> None:
    async with SqliteLedger(tmp_path / "ledger.db") as ledger:
        claim = await ledger.begin_attempt(PROJECT, job_spec("x"))
        assert claim == Claim(1, math.inf)
        assert await ledger.renew(PROJECT, job_spec("x"), claim) is claim


# --- in real time: a tiny --rate, and another worker taking over ------------------------------


@needs_postgres
async def test_claims_that_expire_while_paced_are_taken_over_and_each_job_sent_once(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    # One request a second, every job claimed at once: the jobs whose turn comes after 2 s
    # outlive their 2 s claims. Another worker takes over whatever is not created by then.
    sim = await simulator(duplicate_names="accept")  # a second create would make a second job
    specs = [job_spec(f"job-{i}") for i in range(5)]
    async with fresh_database() as dsn:
        paced = on_ledger(
            dsn,
            fast_settings(sim.url, tmp_path, rate=1, concurrency=8, timeout=0.5, lease=2.0),
        )
        rival_settings = on_ledger(dsn, fast_settings(sim.url, tmp_path, timeout=0.5))
        first = ListSource(list(specs))
        with capture_logs() as logs:
            paced_run = asyncio.create_task(run_source(paced, first, RunAccount()))
            conn = await asyncpg.connect(dsn)
            try:
                async with asyncio.timeout(10):
                    while not (waiting := await expired_claims(conn)):
                        await asyncio.sleep(0.05)
                left = {job.name for job in sim.store.jobs}
                rival = ListSource([spec for spec in specs if spec.name in waiting - left])
                await run_source(rival_settings, rival, RunAccount())
                code = await asyncio.wait_for(paced_run, 20)
            finally:
                await conn.close()

    taken = {name for name, r in rival.results.items() if r.outcome is Outcome.CREATED}
    assert taken, "the other worker took no job over"
    assert sim.store.duplicates() == {}
    assert sorted(j.name for j in sim.store.jobs) == [s.name for s in specs]
    assert set(sim.store.requests_by_name.values()) == {1}  # no job was ever sent twice
    for name in taken:  # the paced run woke to a claim taken over, and sent nothing
        assert first.results[name].outcome in (Outcome.UNRESOLVED, Outcome.ALREADY_CREATED)
    assert "taken over" in [e.get("reason") for e in logs if e["event"] == "job.claim_lost"]
    assert code == 1  # unresolved ones: a rerun settles them (already created) without sending


async def expired_claims(conn: asyncpg.Connection[Any]) -> set[str]:
    """Names whose claim has run out, by the wall clock the ledgers use."""
    if await conn.fetchval("SELECT to_regclass('batchsub_jobs')") is None:
        return set()  # the run has not made its schema yet
    rows = await conn.fetch(
        "SELECT name FROM batchsub_jobs WHERE state = 'submitting' AND lease_until < $1",
        time.time(),
    )
    return {row["name"] for row in rows}


# --- a stale worker's late "created" never replaces nor hides the other job ---------------------


@needs_postgres
async def test_a_late_created_write_keeps_the_first_job_id_and_gives_it_back() -> None:
    clocks = Clocks()
    async with two_workers(clocks) as (stale, fresh):
        spec = job_spec("a")
        assert (await stale.begin_attempt(PROJECT, spec)) is not None
        clocks.wall.now += LEASE + 1  # the stale worker froze past its lease
        assert (await fresh.begin_attempt(PROJECT, spec)) is not None
        assert await fresh.record(PROJECT, spec, LedgerState.CREATED, job_id=7) is None
        # The stale worker's answer arrives: its request made a second job.
        assert await stale.record(PROJECT, spec, LedgerState.CREATED, job_id=9) == 7
        # Its other late writes are fenced by the claim they came from.
        assert await stale.record(PROJECT, spec, LedgerState.UNKNOWN, attempt=1) is None
        rec = (await fresh.get_many(PROJECT, ["a"]))["a"]
        assert (rec.state, rec.job_id, rec.attempts) == (LedgerState.CREATED, 7, 2)

        other = job_spec("b")
        await stale.begin_attempt(PROJECT, other)
        clocks.wall.now += LEASE + 1
        claim = await fresh.begin_attempt(PROJECT, other)
        assert claim is not None
        await fresh.record(PROJECT, other, LedgerState.FAILED, attempt=claim.attempt)
        await stale.record(PROJECT, other, LedgerState.UNKNOWN, attempt=1)  # skipped
        assert await stale.renew(PROJECT, other, Claim(1)) is None
        assert (await fresh.get_many(PROJECT, ["b"]))["b"].state is LedgerState.FAILED


async def test_sqlite_keeps_the_first_job_id_too(tmp_path: Path) -> None:
    async with SqliteLedger(tmp_path / "l.db") as ledger:
        spec = job_spec("a")
        await ledger.begin_attempt(PROJECT, spec)
        assert await ledger.record(PROJECT, spec, LedgerState.CREATED, job_id=7) is None
        assert await ledger.record(PROJECT, spec, LedgerState.CREATED, job_id=7) is None
        assert await ledger.record(PROJECT, spec, LedgerState.CREATED, job_id=9) == 7
        assert await ledger.record(PROJECT, spec, LedgerState.CREATED, adopted=True) is None
        assert (await ledger.get_many(PROJECT, ["a"]))["a"].job_id == 7


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def rival_records_first(dsn: str, name: str) -> AsyncIterator[RunningSimulator]:
    """The simulator; while our create of ``name`` is in flight, a rival records its own job."""
    rival = PostgresLedger(dsn, owner="rival")
    await rival.open()

    @web.middleware
    async def race(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST" and orjson.loads(await request.read())["name"] == name:
            await rival.record(PROJECT, job_spec(name), LedgerState.CREATED, job_id=4242)
        return await handler(request)

    config = SimulatorConfig(project_id=PROJECT, tokens=frozenset({TOKEN}))
    try:
        async with simulator_with(config, race) as sim:
            yield sim
    finally:
        await rival.close()


@needs_postgres
async def test_two_job_ids_for_one_name_are_both_reported(tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    async with fresh_database() as dsn, rival_records_first(dsn, "victim") as sim:
        settings = on_ledger(dsn, fast_settings(sim.url, tmp_path))
        source = ListSource([job_spec("ok"), job_spec("victim")])
        with capture_logs() as logs:
            code = await run_source(settings, source, RunAccount(report))
        async with PostgresLedger(dsn) as records:
            kept = (await records.get_many(PROJECT, ["victim"]))["victim"].job_id

    ours = next(j.job_id for j in sim.store.jobs if j.name == "victim")
    assert kept == 4242  # the first recorded stays
    assert code == 1
    data = orjson.loads(report.read_bytes())
    row = next(r for r in data["jobs"] if r["name"] == "victim")
    assert (row["outcome"], row["job_id"], row["duplicate_job_ids"]) == (
        "duplicated",
        4242,
        [ours],
    )
    assert f"job_id 4242 (recorded in the ledger) and {ours}" in row["error"]
    assert data["summary"]["duplicated"] == 1
    assert data["summary"]["exit_code"] == 1
    [event] = [e for e in logs if e["event"] == "job.duplicate"]
    assert (event["job_id"], event["duplicate_job_ids"]) == (4242, [ours])


async def test_a_name_listed_twice_on_the_server_is_reported_with_both_ids(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(duplicate_names="accept")
    for _ in range(2):  # made twice by hand before batchsub ran
        sim.store.add("twice", {"name": "twice"}, int(time.time() * 1000), PROJECT)
    report = tmp_path / "report.json"
    settings = fast_settings(sim.url, tmp_path / "ledger.db")
    source = ListSource([job_spec("twice"), job_spec("once")])
    code = await run_source(settings, source, RunAccount(report))

    assert code == 1
    assert sim.store.requests_by_name == {"once": 1}  # adopted, never sent
    rows = {r["name"]: r for r in orjson.loads(report.read_bytes())["jobs"]}
    assert (rows["twice"]["outcome"], rows["twice"]["job_id"]) == ("duplicated", 1)
    assert rows["twice"]["duplicate_job_ids"] == [2]
    assert rows["once"]["outcome"] == "created"
