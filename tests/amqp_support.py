"""Test helpers for the RabbitMQ tests: unique queue names, queue inspection, cleanup."""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import aio_pika
from aio_pika.abc import AbstractRobustConnection, HeadersType

from batchsub.sources.amqp import dead_queue_name

AMQP_HOST, AMQP_PORT = "127.0.0.1", 5672
AMQP_URL = f"amqp://guest:guest@{AMQP_HOST}:{AMQP_PORT}/"


def broker_listening() -> bool:
    """True when something accepts TCP connections on the RabbitMQ port."""
    try:
        with socket.create_connection((AMQP_HOST, AMQP_PORT), timeout=0.5):
            return True
    except OSError:
        return False


@dataclass(frozen=True, slots=True)
class Received:
    """A message taken off a queue by a test."""

    body: bytes
    headers: dict[str, object]
    content_type: str | None
    delivery_mode: int | None


class Broker:
    """A test's own connection: names queues uniquely, inspects them, deletes them at the end."""

    def __init__(self, connection: AbstractRobustConnection) -> None:
        self._connection = connection
        self._queues: list[str] = []

    @classmethod
    async def open(cls) -> Broker:
        """Connect to the local broker."""
        return cls(await aio_pika.connect_robust(AMQP_URL))

    def queue_name(self, label: str) -> str:
        """A queue name no other test uses; it and its dead-letter queue are deleted at close."""
        name = f"batchsub-test-{label}-{uuid.uuid4().hex[:10]}"
        self._queues += [name, dead_queue_name(name)]
        return name

    async def depth(self, queue: str) -> int:
        """Ready messages in ``queue`` (a passive declare; unacked ones are not counted)."""
        async with self._connection.channel() as channel:
            declared = await channel.declare_queue(queue, passive=True)
            count = declared.declaration_result.message_count
            assert count is not None
            return count

    async def publish(self, queue: str, body: bytes, headers: HeadersType | None = None) -> None:
        """Publish one persistent message as any client could: whatever bytes and headers."""
        async with self._connection.channel() as channel:
            message = aio_pika.Message(
                body, headers=headers or {}, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
            )
            await channel.default_exchange.publish(message, routing_key=queue)

    async def drain(self, queue: str) -> list[Received]:
        """Take and ack every ready message of ``queue``."""
        out: list[Received] = []
        async with self._connection.channel() as channel:
            declared = await channel.declare_queue(queue, passive=True)
            while (message := await declared.get(fail=False)) is not None:
                out.append(
                    Received(
                        message.body,
                        dict(message.headers or {}),
                        message.content_type,
                        int(message.delivery_mode) if message.delivery_mode else None,
                    )
                )
                await message.ack()
        return out

    async def close(self) -> None:
        """Delete every queue named by ``queue_name`` and disconnect."""
        try:
            async with self._connection.channel() as channel:
                for queue in self._queues:
                    await channel.queue_delete(queue)
        finally:
            await self._connection.close()


async def eventually(check: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Wait until ``check()`` is true; fail the test after ``timeout`` seconds."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.02)
