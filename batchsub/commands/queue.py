"""``batchsub publish`` and ``batchsub consume``: manifests through a RabbitMQ queue.

``publish DIR AMQP_URL --queue NAME`` validates the manifests of DIR and publishes each job as a
persistent message (its exact JSON body, its source in ``x-batchsub-source``) with publisher
confirms; ``--no-validate`` publishes each file's raw bytes instead, to try the consumer's
handling of bad input. Exit codes: 0 all published; 1 some manifest invalid or not confirmed;
2 a configuration error.

``consume AMQP_URL --queue NAME`` creates the job of every message through the same engine as
``run`` (one limiter, retry policy and ledger); see ``batchsub.sources.amqp`` for what becomes
of each message. It runs until SIGTERM or SIGINT, drains like ``run`` (in-flight jobs finish,
up to the drain timeout; messages not done are requeued) and then exits 0: invalid and failed
messages are in ``NAME.dead``, handled, not an error of the consumer. It exits 2 on a
configuration error or a credential the API refused.

The AMQP URL may also come from ``BATCHSUB_AMQP_URL``, which keeps its password out of the
process list; the password is never logged or shown.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import aio_pika
import structlog
from aio_pika.abc import AbstractExchange

from batchsub import eventloop
from batchsub.commands._flags import add_send_flags, add_start_flags
from batchsub.commands.apply import add_apply_flags, applying
from batchsub.errors import ConfigError, one_line
from batchsub.jobs import InvalidManifest, JobSpec
from batchsub.logs import configure_command_logging, tell
from batchsub.manifest import read_manifest
from batchsub.masking import mask_url
from batchsub.metrics import Metrics, serving
from batchsub.protocols import Source
from batchsub.report import RunAccount
from batchsub.runner import daemon_exit_code, run_source
from batchsub.settings import Settings
from batchsub.sources.amqp import (
    AMQP_FAILURES,
    CONFIRM_TIMEOUT,
    SOURCE_HEADER,
    SUFFIX_HEADER,
    AmqpSource,
    check_queue_name,
    connect,
    declare_queues,
    open_amqp_source,
)
from batchsub.sources.directory import DirectorySource, scan_manifests
from batchsub.text import printable

log = structlog.get_logger("batchsub.publish")

CONFIRM_WINDOW = 256  # messages awaiting their publisher confirm at once
_CONTENT_TYPES = {".json": "application/json", ".yaml": "application/yaml"}
_URL_HELP = "amqp://user:password@host:5672/vhost (default: $BATCHSUB_AMQP_URL)"


def add_parser(commands: Any) -> None:
    """Register ``publish`` and ``consume`` on the CLI's subparsers."""
    publish = commands.add_parser("publish", help="publish manifests to a RabbitMQ queue")
    publish.add_argument("directory", type=Path, help="directory of .json/.yaml/.yml manifests")
    publish.add_argument("amqp_url", nargs="?", metavar="AMQP_URL", help=_URL_HELP)
    publish.add_argument("--queue", dest="queue", help="queue name (default: $BATCHSUB_QUEUE)")
    publish.add_argument(
        "--no-validate",
        dest="validate",
        action="store_false",
        help="publish each file's raw bytes, one message per file, without validating",
    )
    publish.add_argument("--log-format", choices=["auto", "json", "console"])
    publish.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    publish.set_defaults(handler=_publish_command)

    consume = commands.add_parser(
        "consume", help="create the jobs of a RabbitMQ queue's messages until stopped"
    )
    consume.add_argument("amqp_url", nargs="?", metavar="AMQP_URL", help=_URL_HELP)
    consume.add_argument("--queue", dest="queue", help="queue name (default: $BATCHSUB_QUEUE)")
    add_send_flags(consume)
    add_start_flags(consume, waves=False)
    add_apply_flags(consume)
    consume.add_argument("--report", type=Path, help="write a JSON report of every job on exit")
    consume.add_argument(
        "--simulator", action="store_true", help="start the built-in DLI simulator and send to it"
    )
    consume.add_argument("--progress", choices=["auto", "on", "off"])
    consume.add_argument(
        "--metrics-port", type=int, help="serve /metrics and /healthz on this port"
    )
    consume.add_argument(
        "--metrics-host", help="address the metrics port listens on (default: 127.0.0.1)"
    )
    consume.set_defaults(handler=_consume_command)


def amqp_target(settings: Settings) -> tuple[str, str]:
    """The AMQP URL and queue name from the settings, or ConfigError saying what is missing."""
    if settings.amqp_url is None or not settings.amqp_url.get_secret_value():
        raise ConfigError("no AMQP URL: pass AMQP_URL or set BATCHSUB_AMQP_URL")
    if not settings.queue:
        raise ConfigError("no queue: pass --queue NAME or set BATCHSUB_QUEUE")
    return settings.amqp_url.get_secret_value(), check_queue_name(settings.queue)


def prefetch_for(concurrency: int) -> int:
    """Unacked messages the broker may hand us: enough to keep every worker busy, no more."""
    return min(concurrency * 2, 65535)


# --- publish --------------------------------------------------------------------------------


@dataclass(slots=True)
class PublishCounts:
    """What ``publish`` did: messages confirmed, manifests refused, messages not confirmed."""

    published: int = 0
    invalid: int = 0
    failed: int = 0

    def line(self) -> str:
        """The one-line summary."""
        text = f"published {self.published}, invalid {self.invalid}"
        return text + (f", not confirmed {self.failed}" if self.failed else "")


def _print_invalid(error: str) -> None:
    tell(f"invalid: {error}")  # a JSON event under --log-format json


async def publish_directory(
    url: str,
    queue: str,
    directory: Path,
    *,
    validate: bool = True,
    on_invalid: Callable[[str], None] = _print_invalid,
) -> PublishCounts:
    """Publish DIR's jobs (or, without ``validate``, its files) to ``queue`` with confirms.

    The queues are declared first, so publishing before any consumer started works.
    """
    check_queue_name(queue)
    counts = PublishCounts()
    connection = await connect(url)
    try:
        channel = await connection.channel(on_return_raises=True)
        await declare_queues(channel, queue)
        sender = _ConfirmedSender(channel.default_exchange, queue, counts)
        if validate:
            async for item in DirectorySource(directory).items():
                if isinstance(item, InvalidManifest):
                    counts.invalid += 1
                    on_invalid(item.error)
                    continue
                assert isinstance(item, JobSpec)  # no file index here: every job is read
                headers = {SOURCE_HEADER: item.source}
                await sender.send(item.body, headers, "application/json")
        else:
            for found in _raw_files(directory):
                if isinstance(found, InvalidManifest):  # unlistable or unreadable: not sent
                    counts.invalid += 1
                    on_invalid(found.error)
                    continue
                path, data = found
                suffix = path.suffix.lower()
                headers = {SOURCE_HEADER: printable(str(path)), SUFFIX_HEADER: suffix}
                content_type = _CONTENT_TYPES.get(suffix.replace(".yml", ".yaml"))
                await sender.send(data, headers, content_type)
        await sender.flush()
    finally:
        await connection.close()
    log.info("publish.done", queue=queue, url=mask_url(url), **asdict(counts))
    return counts


def _raw_files(directory: Path) -> Iterator[tuple[Path, bytes] | InvalidManifest]:
    """Each manifest file's bytes as ``run`` would read them, or why they cannot be read."""
    for found in scan_manifests(directory):
        if isinstance(found, InvalidManifest):
            yield found
            continue
        data = read_manifest(found, printable(str(found)))
        yield data if isinstance(data, InvalidManifest) else (found, data)


class _ConfirmedSender:
    """Publishes with up to CONFIRM_WINDOW confirms outstanding, counting the outcomes."""

    def __init__(self, exchange: AbstractExchange, queue: str, counts: PublishCounts) -> None:
        self._exchange = exchange
        self._queue = queue
        self._counts = counts
        self._pending: set[asyncio.Task[bool]] = set()

    async def send(self, body: bytes, headers: dict[str, str], content_type: str | None) -> None:
        if len(self._pending) >= CONFIRM_WINDOW:
            done, self._pending = await asyncio.wait(
                self._pending, return_when=asyncio.FIRST_COMPLETED
            )
            self._tally(done)
        message = aio_pika.Message(
            body,
            headers=dict(headers),
            content_type=content_type,
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        self._pending.add(asyncio.create_task(self._publish(message)))

    async def flush(self) -> None:
        if self._pending:
            done, _ = await asyncio.wait(self._pending)
            self._tally(done)
            self._pending = set()

    async def _publish(self, message: aio_pika.Message) -> bool:
        try:
            await self._exchange.publish(message, routing_key=self._queue, timeout=CONFIRM_TIMEOUT)
        except AMQP_FAILURES as exc:
            log.error("publish.not_confirmed", queue=self._queue, error=one_line(exc))
            return False
        return True

    def _tally(self, done: set[asyncio.Task[bool]]) -> None:
        for task in done:
            if task.result():
                self._counts.published += 1
            else:
                self._counts.failed += 1


def _publish_command(settings: Settings, args: argparse.Namespace) -> int:
    url, queue = amqp_target(settings)
    configure_command_logging(settings, quiet=True)
    counts = asyncio.run(publish_directory(url, queue, args.directory, validate=args.validate))
    print(counts.line())
    return 1 if counts.invalid or counts.failed else 0


# --- consume --------------------------------------------------------------------------------


async def consume_source(
    settings: Settings,
    source: AmqpSource,
    *,
    report: Path | None = None,
    simulator: bool = False,
    progress: bool = False,
    apply: bool = False,
    savepoint: bool = False,
) -> int:
    """Create the jobs of ``source``'s messages until it is closed or the run is stopped.

    Returns 0 once stopped (SIGTERM, SIGINT, ``source.stop()``), 2 if a setting or a refused
    credential stopped it: outcomes of single messages are the dead-letter queue's business.
    With ``metrics_port`` set, serves /metrics and /healthz meanwhile (probes for workers).
    """
    account = RunAccount(report)
    sent: Source = source
    if apply:  # a changed manifest of a created job updates it (``commands.apply``)
        sent, account = applying(settings, source, report, savepoint=savepoint)
    metrics = Metrics()
    async with serving(metrics, settings.metrics_host, settings.metrics_port):
        code = await run_source(
            settings,
            sent,
            account,
            simulator=simulator,
            progress=progress,
            endless=True,
            observer=metrics,
        )
    return daemon_exit_code(code)


async def consume(
    settings: Settings,
    *,
    report: Path | None = None,
    simulator: bool = False,
    progress: bool = False,
    apply: bool = False,
    savepoint: bool = False,
) -> int:
    """``batchsub consume``: connect, declare, consume until stopped; returns the exit code."""
    url, queue = amqp_target(settings)
    async with open_amqp_source(url, queue, prefetch=prefetch_for(settings.concurrency)) as source:
        return await consume_source(
            settings,
            source,
            report=report,
            simulator=simulator,
            progress=progress,
            apply=apply,
            savepoint=savepoint,
        )


def _consume_command(settings: Settings, args: argparse.Namespace) -> int:
    amqp_target(settings)  # fail before logging is set up
    interactive = configure_command_logging(settings)
    progress = settings.progress_shown(interactive)
    return eventloop.run(
        consume(
            settings,
            report=args.report,
            simulator=args.simulator,
            progress=progress,
            apply=args.apply,
            savepoint=args.savepoint,
        ),
        settings.event_loop,
    )
