"""publish and consume against a real RabbitMQ on 127.0.0.1:5672 and the in-process simulator."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from batchsub.cli import main
from batchsub.commands.queue import consume_source, prefetch_for, publish_directory
from batchsub.errors import ConfigError
from batchsub.settings import Settings
from batchsub.sources.amqp import (
    ERROR_HEADER,
    OUTCOME_HEADER,
    SOURCE_HEADER,
    SUFFIX_HEADER,
    AmqpSource,
    connect,
    dead_queue_name,
    open_amqp_source,
)
from tests.amqp_support import AMQP_URL, Broker, broker_listening, eventually
from tests.fs_support import odd_entries
from tests.support import PROJECT, TOKEN, SimulatorFactory, fast_settings, write_manifests

pytestmark = pytest.mark.skipif(
    not broker_listening(), reason="RabbitMQ is not listening on 127.0.0.1:5672 (CI starts it)"
)


@pytest.fixture
async def broker() -> AsyncIterator[Broker]:
    """A connection of the test's own; the queues it named are deleted afterwards."""
    broker = await Broker.open()
    yield broker
    await broker.close()


def settings_for(url: str, tmp_path: Path, queue: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {"concurrency": 8, "amqp_url": AMQP_URL, "queue": queue}
    return fast_settings(url, tmp_path / "ledger.db", **{**values, **overrides})


async def consume_until(
    settings: Settings, done: Callable[[AmqpSource], bool]
) -> tuple[int, AmqpSource]:
    """Run the consumer in process until ``done(source)``, then stop it as SIGTERM would."""
    assert settings.queue is not None
    prefetch = prefetch_for(settings.concurrency)
    async with open_amqp_source(AMQP_URL, settings.queue, prefetch=prefetch) as source:
        task = asyncio.create_task(consume_source(settings, source))
        try:
            await eventually(lambda: done(source) or task.done())
        finally:
            source.stop()
            code = await asyncio.wait_for(task, 10)
    return code, source


def write_mixed(directory: Path) -> list[str]:
    """Four valid one-job files, a YAML list of two jobs, a broken file and a typo; valid names."""
    names = write_manifests(directory, 4)
    (directory / "list.yaml").write_text(
        "- {name: yaml-a, queue_name: testQueue, cu_number: 2}\n"
        "- {name: yaml-b, queue_name: testQueue}\n"
    )
    (directory / "broken.json").write_text('{"name": "broken",')
    (directory / "typo.json").write_bytes(orjson.dumps({"name": "typo", "parallel_numbr": 2}))
    return [*names, "yaml-a", "yaml-b"]


async def test_publish_validates_and_publishes_each_job(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    queue = broker.queue_name("publish")
    write_mixed(tmp_path / "m")

    code = await asyncio.to_thread(
        main, ["publish", str(tmp_path / "m"), AMQP_URL, "--queue", queue]
    )

    out, err = capsys.readouterr()
    assert code == 1
    assert out.strip().splitlines()[-1] == "published 6, invalid 2"
    assert f"{tmp_path / 'm' / 'typo.json'}: parallel_numbr: unknown field" in err
    assert f"{tmp_path / 'm' / 'broken.json'}: invalid JSON" in err
    assert await broker.depth(dead_queue_name(queue)) == 0
    messages = await broker.drain(queue)
    by_source = {m.headers[SOURCE_HEADER]: m for m in messages}
    assert len(messages) == 6
    first = by_source[str(tmp_path / "m" / "job-00000.json")]
    assert first.body == (tmp_path / "m" / "job-00000.json").read_bytes()  # exact JSON body
    assert first.content_type == "application/json"
    assert first.delivery_mode == 2  # persistent
    yaml_b = by_source[f"{tmp_path / 'm' / 'list.yaml'}#1"]
    assert orjson.loads(yaml_b.body) == {"name": "yaml-b", "queue_name": "testQueue"}


async def test_publish_no_validate_sends_each_file_raw(broker: Broker, tmp_path: Path) -> None:
    queue = broker.queue_name("raw")
    write_mixed(tmp_path / "m")

    counts = await publish_directory(AMQP_URL, queue, tmp_path / "m", validate=False)

    assert (counts.published, counts.invalid, counts.failed) == (7, 0, 0)
    messages = {m.headers[SOURCE_HEADER]: m for m in await broker.drain(queue)}
    assert len(messages) == 7
    broken = messages[str(tmp_path / "m" / "broken.json")]
    assert broken.body == b'{"name": "broken",'
    assert broken.headers[SUFFIX_HEADER] == ".json"
    listed = messages[str(tmp_path / "m" / "list.yaml")]
    assert listed.body == (tmp_path / "m" / "list.yaml").read_bytes()
    assert listed.headers[SUFFIX_HEADER] == ".yaml"
    assert listed.content_type == "application/yaml"


async def test_publish_reports_unreadable_entries_with_or_without_validation(
    broker: Broker, tmp_path: Path
) -> None:
    write_manifests(tmp_path / "m", 1)
    problems = odd_entries(tmp_path / "m")
    expected = {f"{tmp_path / 'm' / name}: {problem}" for name, problem in problems.items()}
    for validate in (True, False):
        queue = broker.queue_name("odd")
        said: list[str] = []
        counts = await publish_directory(
            AMQP_URL, queue, tmp_path / "m", validate=validate, on_invalid=said.append
        )
        assert (counts.published, counts.invalid, counts.failed) == (1, 3, 0)
        assert set(said) == expected
        assert [m.headers[SOURCE_HEADER] for m in await broker.drain(queue)] == [
            str(tmp_path / "m" / "job-00000.json")
        ]


async def test_consume_creates_every_job_once_and_dead_letters_invalid_messages(
    broker: Broker, simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator()
    queue = broker.queue_name("consume")
    names = write_mixed(tmp_path / "m")
    await publish_directory(AMQP_URL, queue, tmp_path / "m", validate=False)  # 7 messages

    code, source = await consume_until(
        settings_for(sim.url, tmp_path, queue),
        lambda s: s.acked + s.dead_lettered == 7,
    )

    assert code == 0
    assert (source.acked, source.dead_lettered, source.requeued) == (5, 2, 0)
    assert sorted(job.name for job in sim.store.jobs) == sorted(names)
    assert sim.store.duplicates() == {}
    assert await broker.depth(queue) == 0
    dead = {m.headers[SOURCE_HEADER]: m for m in await broker.drain(dead_queue_name(queue))}
    typo = dead[str(tmp_path / "m" / "typo.json")]
    assert typo.headers[ERROR_HEADER] == (
        f"{tmp_path / 'm' / 'typo.json'}: parallel_numbr: unknown field (not in the DLI create API)"
        " (did you mean parallel_number?)"
    )
    assert typo.headers[OUTCOME_HEADER] == "invalid"
    assert typo.headers[SUFFIX_HEADER] == ".json"  # the original headers are kept
    assert typo.delivery_mode == 2
    broken = dead[str(tmp_path / "m" / "broken.json")]
    assert broken.body == b'{"name": "broken",'
    assert "invalid JSON" in str(broken.headers[ERROR_HEADER])


async def test_a_job_published_twice_is_created_once(
    broker: Broker, simulator: SimulatorFactory, tmp_path: Path
) -> None:
    # The simulator accepts duplicate names, as DLI may: only batchsub can prevent a second job.
    sim = await simulator(duplicate_names="accept", latency=0.05)
    queue = broker.queue_name("twice")
    names = write_manifests(tmp_path / "m", 10)
    for _ in range(2):
        await publish_directory(AMQP_URL, queue, tmp_path / "m")
    settings = settings_for(sim.url, tmp_path, queue)

    code, source = await consume_until(settings, lambda s: s.acked == 20)

    assert (code, source.dead_lettered, source.requeued) == (0, 0, 0)
    assert sim.store.create_requests == 10  # both copies were in flight together: one sent
    assert sorted(job.name for job in sim.store.jobs) == names
    assert await broker.depth(queue) == 0
    assert await broker.depth(dead_queue_name(queue)) == 0

    # Redelivered later (another publish, a crash before the ack): the ledger knows them.
    await publish_directory(AMQP_URL, queue, tmp_path / "m")
    code, again = await consume_until(settings, lambda s: s.acked == 10)
    assert (code, again.dead_lettered) == (0, 0)
    assert sim.store.create_requests == 10
    assert sim.store.duplicates() == {}


async def test_a_permanent_failure_goes_to_the_dead_letter_queue(
    broker: Broker, simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(known_queues=frozenset({"testQueue"}))
    queue = broker.queue_name("failed")
    write_manifests(tmp_path / "m", 3)
    write_manifests(tmp_path / "m", 1, prefix="lost", queue_name="noSuchQueue")
    await publish_directory(AMQP_URL, queue, tmp_path / "m")

    code, source = await consume_until(
        settings_for(sim.url, tmp_path, queue), lambda s: s.acked + s.dead_lettered == 4
    )

    assert code == 0
    assert (source.acked, source.dead_lettered) == (3, 1)
    [dead] = await broker.drain(dead_queue_name(queue))
    assert orjson.loads(dead.body)["name"] == "lost-00000"
    assert dead.headers[OUTCOME_HEADER] == "failed"
    assert "DLI.0002" in str(dead.headers[ERROR_HEADER])
    assert dead.headers[SOURCE_HEADER] == str(tmp_path / "m" / "lost-00000.json")


async def test_sigterm_drains_exits_0_and_requeues_what_was_not_done(
    broker: Broker, simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(latency=0.3)
    queue = broker.queue_name("sigterm")
    names = write_manifests(tmp_path / "m", 16)
    await publish_directory(AMQP_URL, queue, tmp_path / "m")
    ledger = tmp_path / "ledger.db"
    command = [sys.executable, "-m", "batchsub", "consume", AMQP_URL, "--queue", queue]
    command += ["--endpoint", sim.url, "--project-id", PROJECT, "--ledger", str(ledger)]
    command += ["--rate", "0", "--concurrency", "2", "--log-format", "json"]
    env = {"BATCHSUB_AUTH_TOKEN": TOKEN, "BATCHSUB_DRAIN_TIMEOUT": "5"}
    with (tmp_path / "consume.log").open("wb") as log_file:
        proc = await asyncio.create_subprocess_exec(
            *command,
            env={**_base_env(), **env},
            stdout=log_file,
            stderr=log_file,
        )
        try:
            await eventually(lambda: len(sim.store.jobs) >= 2, timeout=20)
            proc.send_signal(signal.SIGTERM)
            code = await asyncio.wait_for(proc.wait(), 15)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    log_text = (tmp_path / "consume.log").read_text()
    assert code == 0, log_text
    assert "run.stopping" in log_text
    left = await broker.depth(queue)
    assert 0 < left < 16  # the unfinished messages were requeued, not acked
    assert len(sim.store.jobs) + left >= 16

    # A new consumer on the same ledger finishes the rest: every job exists exactly once.
    code, _ = await consume_until(
        settings_for(sim.url, tmp_path, queue), lambda s: s.acked + s.dead_lettered == left
    )
    assert code == 0
    assert sorted(job.name for job in sim.store.jobs) == names
    assert sim.store.create_requests == 16
    assert await broker.depth(queue) == 0
    assert await broker.depth(dead_queue_name(queue)) == 0


async def test_cancelling_the_reader_ends_items_and_close_requeues_what_is_not_done(
    broker: Broker, tmp_path: Path
) -> None:
    queue = broker.queue_name("cancel")
    write_manifests(tmp_path / "m", 1)
    await publish_directory(AMQP_URL, queue, tmp_path / "m")
    async with open_amqp_source(AMQP_URL, queue, prefetch=4) as source:
        reader = source.items()
        first = await anext(reader)
        waiting = asyncio.ensure_future(anext(reader))  # the queue is empty: it waits
        await asyncio.sleep(0.05)
        waiting.cancel()  # what the submitter's drain timer (or a stop hook) does
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert first.name == "job-00000"
        assert source.pending == 1
    assert source.requeued == 1
    assert await broker.depth(queue) == 1  # not done, so not lost


async def test_an_unreachable_broker_is_one_line_without_the_password() -> None:
    with pytest.raises(ConfigError) as caught:
        await connect("amqp://user:s3cret-pw@127.0.0.1:1/vhost")
    message = str(caught.value)
    assert message.startswith("cannot connect to RabbitMQ at amqp://user:***@127.0.0.1:1/vhost: ")
    assert "s3cret" not in message
    assert "\n" not in message


def _base_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("BATCHSUB_", "HUAWEICLOUD_"))}


async def test_consume_starts_each_job_once_it_exists(
    broker: Broker, simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(start_seconds=(0.2, 0.2))
    queue = broker.queue_name("consume-start")
    names = write_manifests(tmp_path / "m", 5)
    await publish_directory(AMQP_URL, queue, tmp_path / "m", validate=False)
    settings = settings_for(sim.url, tmp_path, queue, start=True, wait=True, healthy_for=0.2)

    def all_running(source: AmqpSource) -> bool:
        running: int = sim.store.stats(PROJECT)["statuses"].get("job_running", 0)
        return running == len(names)

    code, source = await consume_until(settings, all_running)
    assert code == 0 and source.acked == 5
    rows = sim.store.stats(PROJECT)["jobs"]
    assert sorted(row["name"] for row in rows) == names
    assert all(row["runs"] == 1 and not row["runs_while_running"] for row in rows)
