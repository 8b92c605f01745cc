"""Poison messages and values a ledger refuses: one bad item never fails the others.

Real RabbitMQ, real PostgreSQL (a fresh database per test), real SQLite, and the simulator
over HTTP on loopback. A message whose bytes or headers are bad goes to ``NAME.dead`` with
its reason; a job the ledger cannot hold fails alone; the consumer keeps running throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest
from aiohttp import web

from batchsub.commands.queue import consume_source, prefetch_for, publish_directory
from batchsub.jobs import JobSpec, ManifestItem, Outcome
from batchsub.report import RunAccount
from batchsub.runner import run_source
from batchsub.settings import Settings
from batchsub.simulator import RunningSimulator, SimulatorConfig
from batchsub.sources.amqp import ERROR_HEADER, SOURCE_HEADER, SUFFIX_HEADER, open_amqp_source
from tests.amqp_support import AMQP_URL, Broker, broker_listening
from tests.pg import fresh_database, postgres_listening
from tests.run_support import ListSource, on_ledger
from tests.sim_support import simulator_with
from tests.support import PROJECT, TOKEN, SimulatorFactory, fast_settings

needs_broker = pytest.mark.skipif(not broker_listening(), reason="RabbitMQ is not listening")
needs_postgres = pytest.mark.skipif(not postgres_listening(), reason="PostgreSQL is not listening")


class NotUtf8(str):
    """A header value that pamqp sends as a long string of these bytes, UTF-8 or not."""

    raw: bytes

    def __new__(cls, raw: bytes) -> NotUtf8:
        text = super().__new__(cls, raw.decode("latin-1"))
        text.raw = raw
        return text

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return self.raw


def good_body(name: str) -> bytes:
    return orjson.dumps({"name": name, "queue_name": "testQueue", "cu_number": 2})


@needs_broker
@needs_postgres
async def test_poison_messages_are_dead_lettered_and_the_worker_keeps_consuming(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(duplicate_names="accept")
    broker = await Broker.open()
    try:
        async with fresh_database() as dsn:
            await _poison_queue(broker, sim, dsn, tmp_path)
    finally:
        await broker.close()


async def _poison_queue(broker: Broker, sim: RunningSimulator, dsn: str, tmp_path: Path) -> None:
    queue = broker.queue_name("poison")
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "nul-escape.json").write_bytes(b'{"name": "raw\\u0000nul", "queue_name": "q"}')
    (raw / "nul-byte.json").write_bytes(b'{"name": "raw\x00byte"}')
    huge_source = "x" * 100_000 + "\x00\n\x85?"  # a header any client could send
    bad: list[tuple[bytes, dict[str, Any], str]] = [  # body, headers, what the reason says
        (b'{"name": "crafted\\u0000nul"}', {}, "name: must contain printable characters only"
         " (U+0000 at position 8: a control character)"),
        (b'{"name": "lone\\ud800"}', {}, "invalid JSON at line 1, column 15: no low surrogate"),
        (b'name: "lone\\ud800"', {SUFFIX_HEADER: ".yaml"}, "found invalid Unicode character"),
        (b'{"name": "caf\xe9"}', {}, "not UTF-8 text (byte 0xe9 at offset 13)"),
        (b'{"name": "desc", "desc": "\\u001b[31m"}', {}, "desc: must not contain control char"),
        # A long-string header that is not UTF-8 arrives as bytes, and must go out again;
        # a header key that is not UTF-8 would make pamqp drop the connection, every time.
        (b"{not json", {"x-odd": NotUtf8(b"\xff\xfe"), NotUtf8(b"k\xff"): 1},
         "invalid JSON at line 1, column 2"),
    ]  # fmt: skip
    good = [f"good-{i}" for i in range(len(bad) + 1)]
    (tmp_path / "first").mkdir()
    (tmp_path / "first" / "good-0.json").write_bytes(good_body(good[0]))
    await publish_directory(AMQP_URL, queue, tmp_path / "first")  # declares the queues too
    await publish_directory(AMQP_URL, queue, raw, validate=False)
    for index, (body, headers, _) in enumerate(bad, start=1):
        await broker.publish(queue, body, {SOURCE_HEADER: f"bad-{index}", **headers})
        await broker.publish(queue, good_body(good[index]), {SOURCE_HEADER: f"good-{index}"})
    await broker.publish(queue, good_body("huge-source"), {SOURCE_HEADER: huge_source})
    await broker.publish(queue, good_body("odd-headers"), {SOURCE_HEADER: 7, SUFFIX_HEADER: 1.5})
    invalid_utf8 = bytearray(b"\xff\x00\xfe")
    await broker.publish(queue, good_body("bytes-source"), {SOURCE_HEADER: invalid_utf8})
    await broker.publish(queue, good_body("str-source"), {SOURCE_HEADER: NotUtf8(b"a\xffb")})
    await broker.publish(queue, good_body("odd-key"), {NotUtf8(b"\xfe"): "x"})
    messages = 1 + 2 + 2 * len(bad) + 5

    settings = on_ledger(
        dsn, fast_settings(sim.url, tmp_path, concurrency=4, amqp_url=AMQP_URL, queue=queue)
    )
    async with open_amqp_source(AMQP_URL, queue, prefetch=prefetch_for(4)) as source:
        worker = asyncio.create_task(consume_source(settings, source))
        try:
            async with asyncio.timeout(30):
                while source.acked + source.dead_lettered < messages:
                    assert not worker.done(), "the consumer stopped"
                    await asyncio.sleep(0.02)
            await asyncio.sleep(0.3)  # anything redelivered would show now
            assert not worker.done(), "the consumer stopped"
        finally:
            source.stop()
            code = await asyncio.wait_for(worker, 10)

    assert code == 0
    created = sorted(job.name for job in sim.store.jobs)
    extra = ["huge-source", "odd-headers", "bytes-source", "str-source", "odd-key"]
    assert created == sorted([*good, *extra])
    assert sim.store.duplicates() == {}
    assert (source.acked, source.dead_lettered, source.requeued) == (len(good) + 5, 2 + len(bad), 0)
    assert await broker.depth(queue) == 0
    dead = await broker.drain(f"{queue}.dead")
    reasons = {str(m.headers[SOURCE_HEADER]): str(m.headers[ERROR_HEADER]) for m in dead}
    assert len(dead) == 2 + len(bad)
    assert (
        "name: must contain printable characters only (U+0000 at position 4"
        in (reasons[str(raw / "nul-escape.json")])
    )
    assert "binary file" in reasons[str(raw / "nul-byte.json")]
    for index, (_, _, reason) in enumerate(bad, start=1):
        assert f"bad-{index}: " in reasons[f"bad-{index}"]
        assert reason in reasons[f"bad-{index}"], reasons[f"bad-{index}"]
    # The odd source header is stored escaped and cut, not refused.
    conn = await asyncpg.connect(settings.ledger)
    try:
        rows = await conn.fetch("SELECT name, source FROM batchsub_jobs")
    finally:
        await conn.close()
    stored = {row["name"]: row["source"] for row in rows}
    assert len(stored["huge-source"]) == 512
    assert stored["huge-source"].startswith("xxx")
    assert stored["huge-source"].endswith("...")
    assert stored["bytes-source"] == "\ufffd\\x00\ufffd"
    assert stored["str-source"] == "a\ufffdb"
    odd = next(m for m in dead if m.headers[SOURCE_HEADER] == f"bad-{len(bad)}")
    assert odd.headers["x-odd"] == bytearray(b"\xff\xfe")  # the same bytes, sent again
    assert odd.headers["k\ufffd"] == 1
    assert stored["odd-headers"].startswith(f"amqp:{queue}#")


# --- values a ledger refuses, beyond what the model checks ----------------------------------


def unchecked(name: str, body: bytes, source: str = "") -> JobSpec:
    """A job as a source that skips the model would give it (the submitter checks it later)."""
    return JobSpec(name, body, hashlib.sha256(body).hexdigest(), source or f"{name}.json")


@contextlib.asynccontextmanager
async def ledger_url(kind: str, tmp_path: Path) -> AsyncIterator[str]:
    if kind == "sqlite":
        yield str(tmp_path / "ledger.db")
        return
    if not postgres_listening():
        pytest.skip("PostgreSQL is not listening")
    async with fresh_database() as dsn:
        yield dsn


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_a_job_the_ledger_refuses_fails_alone_and_the_others_go_on(
    kind: str, simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator()
    long_source = secrets.token_hex(1_500)  # 3,000 bytes: too big for a PostgreSQL index row
    items: list[ManifestItem] = [
        unchecked("ok-1", good_body("ok-1")),
        unchecked("nul\x00name", b'{"name":"nul\\u0000name"}'),
        unchecked("ok-2", good_body("ok-2")),
        unchecked("sur\ud800", b'{"name":"sur"}'),  # a name no UTF-8 can encode
        unchecked("long-source", good_body("long-source"), source=long_source),
        unchecked("ok-3", good_body("ok-3")),
    ]
    source = ListSource(items)
    async with ledger_url(kind, tmp_path) as ledger:
        settings = on_ledger(ledger, fast_settings(sim.url, tmp_path, concurrency=4))
        account = RunAccount()
        code = await run_source(settings, source, account)

    assert code == 1
    outcomes = {name: result.outcome for name, result in source.results.items()}
    refused = "not sent: the ledger refuses this job: ledger "
    assert {n: o for n, o in outcomes.items() if n and n.startswith("ok-")} == dict.fromkeys(
        ["ok-1", "ok-2", "ok-3"], Outcome.CREATED
    )
    assert outcomes["sur\ud800"] is Outcome.FAILED
    assert str(source.results["sur\ud800"].error).startswith(refused)
    if kind == "postgres":  # PostgreSQL refuses NUL, and index rows over 2704 bytes
        assert outcomes["nul\x00name"] is Outcome.FAILED
        assert "invalid byte sequence" in str(source.results["nul\x00name"].error)
        assert outcomes["long-source"] is Outcome.FAILED
        assert "index row size 3" in str(source.results["long-source"].error)
    else:  # SQLite holds both; the model then refuses the name
        assert outcomes["nul\x00name"] is Outcome.INVALID
        assert outcomes["long-source"] is Outcome.CREATED
    sent = {name for name in sim.store.requests_by_name}
    assert sent == {name for name, o in outcomes.items() if o is Outcome.CREATED}
    assert sim.store.duplicates() == {}


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.asynccontextmanager
async def simulator_answering(message: str, names: set[str]) -> AsyncIterator[str]:
    """The simulator, except that creates of ``names`` get a 400 whose message is ``message``."""

    @web.middleware
    async def refuse(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method == "POST" and orjson.loads(await request.read())["name"] in names:
            body = orjson.dumps({"error_code": "DLI.0001", "error_msg": message})
            return web.Response(status=400, body=body, content_type="application/json")
        return await handler(request)

    config = SimulatorConfig(project_id=PROJECT, tokens=frozenset({TOKEN}))
    async with simulator_with(config, refuse) as sim:
        yield sim.url


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
async def test_an_api_error_message_holding_nul_is_stored_escaped(
    kind: str, tmp_path: Path
) -> None:
    message = "queue \x00evil\x85 refused\nsee\tdocs"
    async with simulator_answering(message, {"bad"}) as url, ledger_url(kind, tmp_path) as ledger:
        settings = on_ledger(ledger, fast_settings(url, tmp_path))
        source = ListSource([unchecked(n, good_body(n)) for n in ("a", "bad", "b")])
        code = await run_source(settings, source, RunAccount())
        records = await _records(settings)

    assert code == 1
    assert source.results["bad"].outcome is Outcome.FAILED
    assert message in str(source.results["bad"].error)  # the report says what DLI said
    assert records["bad"] == ("failed", "queue \\x00evil\\x85 refused\\x0asee\\x09docs")
    assert (records["a"][0], records["b"][0]) == ("created", "created")


async def _records(settings: Settings) -> dict[str, tuple[str, str | None]]:
    from batchsub.wiring import open_ledger

    ledger = open_ledger(settings.ledger, read_only=True)
    await ledger.open()
    try:
        return {
            rec.name: (rec.state.value, rec.error.message if rec.error else None)
            async for rec in ledger.records(PROJECT)
        }
    finally:
        await ledger.close()
