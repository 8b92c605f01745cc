"""``consume --apply`` against the real RabbitMQ broker: a manifest sent again with a change
updates its running job (stop with a savepoint, PUT, resume), and its message is acked."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from batchsub.commands.queue import consume_source, prefetch_for, publish_directory
from batchsub.sources.amqp import dead_queue_name, open_amqp_source
from tests.amqp_support import AMQP_URL, Broker, broker_listening, eventually
from tests.support import SimulatorFactory, fast_settings, write_manifests

pytestmark = pytest.mark.skipif(
    not broker_listening(), reason="RabbitMQ is not listening on 127.0.0.1:5672 (CI starts it)"
)
QUICK = {
    "start_seconds": (0.1, 0.1),
    "savepoint_seconds": (0.1, 0.1),
    "stop_seconds": (0.1, 0.1),
    "update_running": "reject",
}


async def test_a_changed_message_updates_its_running_job(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(**QUICK)
    broker = await Broker.open()
    try:
        queue = broker.queue_name("apply")
        settings = fast_settings(
            sim.url, tmp_path / "ledger.db", amqp_url=AMQP_URL, queue=queue, concurrency=4
        )

        async def consume(count: int) -> int:
            prefetch = prefetch_for(settings.concurrency)
            async with open_amqp_source(AMQP_URL, queue, prefetch=prefetch) as source:
                task = asyncio.create_task(
                    consume_source(settings, source, apply=True, savepoint=True)
                )
                try:
                    await eventually(lambda: source.acked == count or task.done(), timeout=20)
                finally:
                    source.stop()
                    code = await asyncio.wait_for(task, 15)
            return code

        write_manifests(tmp_path / "m", 3)
        await publish_directory(AMQP_URL, queue, tmp_path / "m")
        assert await consume(3) == 0
        for made in sim.store.jobs:
            made.enter("job_running")
        write_manifests(tmp_path / "m", 3, cu_number=4)
        await publish_directory(AMQP_URL, queue, tmp_path / "m")
        assert await consume(3) == 0
        assert len(sim.store.jobs) == 3 and sim.store.create_requests == 3
        for made in sim.store.jobs:
            assert made.body["cu_number"] == 4
            assert (made.counts.savepoints, made.counts.updates_refused) == (1, 0)
            assert made.counts.resumes == [made.savepoint_path]
        assert await broker.depth(dead_queue_name(queue)) == 0
    finally:
        await broker.close()
