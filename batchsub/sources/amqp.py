"""A RabbitMQ queue of manifests, consumed with aio-pika: a message is acked once its jobs are done.

Topology (declared by both ``publish`` and ``consume``, so either may start first): a durable
queue NAME whose dead-letter arguments point at the durable queue ``NAME.dead``.

One message holds one manifest (JSON; YAML when its ``x-batchsub-suffix`` header says so),
so it may give several ManifestItems; once the outcome of each is committed, the message is:

- every job created or already created: ack;
- some job invalid, failed, drifted or duplicated: a copy goes to ``NAME.dead`` with the
  reason in the ``x-batchsub-error`` header, published persistent with a publisher
  confirm, THEN the original is acked. Rejecting to the dead-letter exchange would keep the
  original headers but RabbitMQ cannot add one, and the reason is what a person needs.
  A crash between confirm and ack leaves two copies in ``NAME.dead``, never none;
- some job unresolved (a transient failure that outlasted the retries, the run stopping,
  a job claimed by another worker): nack with requeue, to be tried again.

The ledger makes a redelivered or twice-published job harmless; within one consumer a job
whose name is already in flight is held back until that one is done, since two concurrent
creates of one name would both be sent. Messages not done when the source is closed
are requeued by ``close()`` (and would be by the broker when the connection closes).

No message can stop a consumer, whatever its body or headers: a body that is not a valid
manifest is dead-lettered with the parser's reason, a job the ledger refuses to hold fails
(dead-lettered) alone, and the ``x-batchsub-source`` header is stored and shown with its
control characters escaped, cut to 512 characters. Header keys and properties that are
not UTF-8 are read with replacement characters (``amqp_headers``) rather than drop the
connection on every redelivery.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import (
    AbstractChannel,
    AbstractIncomingMessage,
    AbstractQueue,
    AbstractRobustConnection,
    ConsumerTag,
    HeadersType,
)
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, ChannelPreconditionFailed
from yarl import URL

from batchsub.errors import ConfigError, one_line
from batchsub.jobs import (
    BROKEN_OUTCOMES,
    EXISTING_OUTCOMES,
    InvalidManifest,
    JobResult,
    ManifestItem,
    Outcome,
)
from batchsub.manifest import parse_manifest_bytes
from batchsub.masking import mask_url, scrub, url_passwords
from batchsub.sources import amqp_headers
from batchsub.sources._tally import Tally
from batchsub.text import printable

log = structlog.get_logger("batchsub.amqp")
amqp_headers.install()  # a header key that is not UTF-8 must not drop the connection

SOURCE_HEADER = "x-batchsub-source"
SUFFIX_HEADER = "x-batchsub-suffix"
ERROR_HEADER = "x-batchsub-error"
OUTCOME_HEADER = "x-batchsub-outcome"
DEAD_SUFFIX = ".dead"
CONNECT_TIMEOUT = 10.0  # seconds for the first connection; later losses reconnect forever
CONFIRM_TIMEOUT = 30.0  # seconds for a publisher confirm (a broker under an alarm blocks)
_MAX_HEADER_CHARS = 4000
_MAX_SOURCE_CHARS = 512
_MAX_QUEUE_NAME = 255 - len(DEAD_SUFFIX)  # AMQP short string, with room for ".dead"

# What an AMQP call can raise when the broker or the connection fails.
AMQP_FAILURES: tuple[type[BaseException], ...] = (*CONNECTION_EXCEPTIONS, TimeoutError)


def dead_queue_name(queue: str) -> str:
    """The dead-letter queue of ``queue``."""
    return queue + DEAD_SUFFIX


def check_queue_name(queue: str) -> str:
    """``queue`` if it can name a queue and its dead-letter twin, else ConfigError."""
    if not queue or len(queue.encode()) > _MAX_QUEUE_NAME:
        raise ConfigError(f"--queue must be 1 to {_MAX_QUEUE_NAME} bytes (got {len(queue)})")
    if queue.startswith("amq."):
        raise ConfigError(f"--queue {queue!r}: names starting with 'amq.' are reserved")
    return queue


async def connect(url: str) -> AbstractRobustConnection:
    """A robust connection (reconnects by itself); ConfigError naming the URL if unreachable."""
    shown = mask_url(url)
    try:
        scheme = URL(url).scheme
    except ValueError:
        scheme = ""
    if scheme not in ("amqp", "amqps"):
        raise ConfigError(f"AMQP URL {shown} must start with amqp:// or amqps://")
    try:
        return await aio_pika.connect_robust(url, timeout=CONNECT_TIMEOUT)
    except aio_pika.exceptions.ProbableAuthenticationError:
        raise ConfigError(
            f"RabbitMQ at {shown} refused the login: check the user and password"
        ) from None
    except AMQP_FAILURES as exc:
        reason = scrub(one_line(exc), url_passwords(url))
        raise ConfigError(f"cannot connect to RabbitMQ at {shown}: {reason}") from None


async def declare_queues(channel: AbstractChannel, queue: str) -> AbstractQueue:
    """Declare NAME (durable, dead-lettered to NAME.dead) and NAME.dead; returns NAME."""
    dead = dead_queue_name(queue)
    try:
        await channel.declare_queue(dead, durable=True)
        return await channel.declare_queue(
            queue,
            durable=True,
            arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead},
        )
    except ChannelPreconditionFailed as exc:
        raise ConfigError(f"queue {queue!r} exists with other settings: {one_line(exc)}") from None


def _resendable(value: Any) -> Any:
    """Headers as received, in types they can be sent again in.

    A long string that is not UTF-8 arrives as ``bytes`` (pamqp's fallback), which pamqp
    cannot encode; as a byte array it can, with the same bytes.
    """
    if isinstance(value, bytes):
        return bytearray(value)
    if isinstance(value, dict):
        return {key: _resendable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_resendable(item) for item in value]
    return value


def header_text(headers: HeadersType, key: str) -> str | None:
    """A header as text (AMQP may carry it as bytes), or None when absent or not text."""
    value = headers.get(key)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    return value if isinstance(value, str) else None


@dataclass(eq=False, slots=True)
class _Delivery:
    """One message, not yet acked or requeued while ``done`` is False."""

    message: AbstractIncomingMessage
    done: bool = False


REQUEUE_DELAY = 1.0  # seconds an unresolved message waits before it is requeued
# The outcome a dead-lettered message is filed under: the first of these among its jobs.
_WORST_FIRST = (Outcome.INVALID, Outcome.DRIFTED, Outcome.DUPLICATED, Outcome.FAILED)


class AmqpSource:
    """Manifests from a RabbitMQ queue; ``finish`` acks, dead-letters or requeues each message.

    Use ``open_amqp_source`` to get one. ``stop()`` makes ``items()`` end at once (it waits for
    the next message otherwise; cancelling the task reading it works too); ``close()`` stops
    consuming and requeues whatever was not done.
    """

    def __init__(self, channel: AbstractChannel, queue: AbstractQueue) -> None:
        self._channel = channel
        self._queue = queue
        self.name = queue.name
        self._inbox: asyncio.Queue[_Delivery | None] = asyncio.Queue()
        self._open: set[_Delivery] = set()  # delivered, not acked or requeued yet
        self._jobs: Tally[_Delivery] = Tally()  # the items of each message, until all are done
        self._consumer_tag: ConsumerTag | None = None
        self._stopped = False
        self.acked = 0
        self.dead_lettered = 0
        self.requeued = 0

    @property
    def pending(self) -> int:
        """Messages delivered and not yet acked or requeued."""
        return len(self._open)

    async def items(self) -> AsyncIterator[ManifestItem]:
        """Yield the items of each message as it arrives, until ``stop()``."""
        if self._consumer_tag is None and not self._stopped:
            self._consumer_tag = await self._queue.consume(self._on_message)
        while not self._stopped:
            entry = await self._inbox.get()
            if entry is None:
                return
            # Two copies of one job in flight together are serialised by the submitter,
            # whatever the source: the second waits for the first's outcome.
            for item in self._parse(entry):
                if self._stopped:
                    return
                yield item

    def stop(self) -> None:
        """Stop ``items()`` at once; messages it did not yield are requeued by ``close()``."""
        if not self._stopped:
            self._stopped = True
            self._inbox.put_nowait(None)

    async def close(self) -> None:
        """Stop consuming and requeue every message not done; call after the run."""
        self.stop()
        if self._consumer_tag is not None:
            try:
                await self._queue.cancel(self._consumer_tag)
            except AMQP_FAILURES as exc:
                log.warning("amqp.cancel_failed", queue=self.name, error=one_line(exc))
        for delivery in list(self._open):
            await self._release(delivery, requeue=True)
        if self.requeued or self.acked or self.dead_lettered:
            log.info(
                "amqp.closed",
                queue=self.name,
                acked=self.acked,
                dead_lettered=self.dead_lettered,
                requeued=self.requeued,
            )

    async def finish(self, item: ManifestItem, result: JobResult) -> None:
        """Record one item's outcome; once every item of its message has one, ack, dead-letter or
        requeue the message."""
        done = self._jobs.finish(item, result)
        if done is not None and not done[0].done:
            await self._answer_broker(*done)

    async def _on_message(self, message: AbstractIncomingMessage) -> None:
        delivery = _Delivery(message)
        self._open.add(delivery)
        if self._stopped:
            await self._release(delivery, requeue=True)
            return
        self._inbox.put_nowait(delivery)

    def _parse(self, delivery: _Delivery) -> list[ManifestItem]:
        message = delivery.message
        headers = message.headers or {}
        source = header_text(headers, SOURCE_HEADER)
        if source is None:
            source = f"amqp:{self.name}#{message.message_id or message.delivery_tag}"
        source = printable(source, _MAX_SOURCE_CHARS)  # any bytes a publisher put there
        suffix = header_text(headers, SUFFIX_HEADER) or ".json"
        try:
            items = parse_manifest_bytes(message.body, source, suffix=suffix)
        except Exception as exc:  # a bug of ours must not make one message stop the worker
            log.error("amqp.parse_failed", queue=self.name, source=source, error=repr(exc))
            reason = printable(f"{source}: cannot be parsed: {exc!r}", _MAX_HEADER_CHARS)
            items = [InvalidManifest(source, reason)]
        self._jobs.track(delivery, items)
        return items

    async def _answer_broker(self, delivery: _Delivery, results: list[JobResult]) -> None:
        """Ack, dead-letter or requeue a message by the outcomes of its jobs."""
        outcomes = {r.outcome for r in results}
        if outcomes <= EXISTING_OUTCOMES:
            await self._release(delivery, ack=True)
        elif Outcome.UNRESOLVED in outcomes:
            if not self._stopped:
                # Busy elsewhere (another worker's claim) or a lost answer: an instant
                # requeue would come straight back and spin; close() cuts the wait short.
                await asyncio.sleep(REQUEUE_DELAY)
            await self._release(delivery, requeue=True)
        elif await self._dead_letter(delivery, results):
            await self._release(delivery, ack=True, dead=True)
        else:
            await self._release(delivery, requeue=True)

    async def _dead_letter(self, delivery: _Delivery, results: list[JobResult]) -> bool:
        """Publish a copy of the message with the reason to NAME.dead; True once confirmed."""
        message = delivery.message
        errors = [r.error or r.outcome.value for r in results if r.outcome in BROKEN_OUTCOMES]
        reason = printable("; ".join(errors), _MAX_HEADER_CHARS)
        worst = next(o for o in _WORST_FIRST if any(r.outcome is o for r in results))
        headers: HeadersType = {
            **_resendable(message.headers or {}),
            ERROR_HEADER: reason,
            OUTCOME_HEADER: worst.value,
        }
        copy = aio_pika.Message(
            message.body,
            headers=headers,
            content_type=message.content_type,
            message_id=message.message_id,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            await self._channel.default_exchange.publish(
                copy, routing_key=dead_queue_name(self.name), timeout=CONFIRM_TIMEOUT
            )
        except AMQP_FAILURES as exc:
            log.error("amqp.dead_letter_failed", queue=self.name, error=one_line(exc))
            return False
        log.warning(
            "amqp.dead_lettered", queue=dead_queue_name(self.name), outcome=worst, error=reason
        )
        return True

    async def _release(
        self, delivery: _Delivery, *, ack: bool = False, requeue: bool = False, dead: bool = False
    ) -> None:
        if delivery.done:
            return
        delivery.done = True
        self._open.discard(delivery)
        try:
            if ack:
                await delivery.message.ack()
            else:
                await delivery.message.nack(requeue=requeue)
        except AMQP_FAILURES as exc:
            # The channel is gone: the broker requeues the message itself.
            log.warning("amqp.settle_failed", queue=self.name, error=one_line(exc))
            return
        if dead:
            self.dead_lettered += 1
        elif ack:
            self.acked += 1
        else:
            self.requeued += 1


@contextlib.asynccontextmanager
async def open_amqp_source(url: str, queue: str, *, prefetch: int) -> AsyncIterator[AmqpSource]:
    """Connect, declare the queues, set the prefetch; yields an AmqpSource, closed on exit."""
    check_queue_name(queue)
    connection = await connect(url)
    try:
        channel = await connection.channel(on_return_raises=True)
        await channel.set_qos(prefetch_count=prefetch)
        declared = await declare_queues(channel, queue)
        log.info("amqp.connected", url=mask_url(url), queue=queue, prefetch=prefetch)
        source = AmqpSource(channel, declared)
        try:
            yield source
        finally:
            await source.close()
    finally:
        await connection.close()
