"""No password reaches any output: every command, run as a user runs it, with a password in the
PostgreSQL ledger URL and the AMQP URL; every byte of stdout, stderr, reports and the ledger read.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

import asyncpg
import pytest

from tests.amqp_support import AMQP_URL, broker_listening, eventually
from tests.pg import fresh_database, postgres_listening
from tests.process_support import run_batchsub_async
from tests.support import PROJECT, REPO, TOKEN, SimulatorFactory, write_manifests

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not postgres_listening(), reason="PostgreSQL is not on 127.0.0.1:5432"),
]

PG_PASSWORD = "pg-Secret-7Hq2"  # trust auth on the test server: accepted and ignored
MQ_PASSWORD = "mq-Secret-4Zr9"  # not the broker's: the login is refused
# The test broker's password is "guest", also its user: look for it where a password sits.
GUEST_PASSWORD_SHOWN = ("guest:guest", ":guest@")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BATCHSUB_", "HUAWEICLOUD_"))}
    return {**env, "PYTHONPATH": str(REPO), "BATCHSUB_LOG_FORMAT": "json", **extra}


class Outputs:
    """Everything the commands wrote, to be searched for the passwords at the end."""

    def __init__(self) -> None:
        self.blobs: list[tuple[str, bytes]] = []

    def add(self, what: str, data: bytes) -> None:
        self.blobs.append((what, data))

    def add_files(self, *paths: Path) -> None:
        for path in paths:
            self.add(str(path), path.read_bytes())

    def assert_clean(self) -> None:
        assert len(self.blobs) > 1
        for what, data in self.blobs:
            text = data.decode("utf-8", "replace")
            assert PG_PASSWORD not in text, what
            assert MQ_PASSWORD not in text, what
            for shown in GUEST_PASSWORD_SHOWN:
                assert shown not in text, what


async def batchsub(
    outputs: Outputs, args: Sequence[str | Path], env: dict[str, str], cwd: Path
) -> int:
    """Run one command to its end, recording its stdout and stderr; its exit code."""
    code, out, err = await run_batchsub_async(*args, env=env, cwd=cwd, timeout=40)
    outputs.add(f"{args[0]} stdout", out)
    outputs.add(f"{args[0]} stderr", err)
    return code


async def ledger_dump(dsn: str) -> bytes:
    """Every row of every table of the ledger, as text."""
    connection = await asyncpg.connect(dsn)
    try:
        tables = await connection.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
        )
        rows = [await connection.fetch(f'SELECT * FROM "{t["tablename"]}"') for t in tables]
    finally:
        await connection.close()
    assert rows
    return repr(rows).encode()


def with_password(dsn: str, password: str = PG_PASSWORD) -> str:
    return dsn.replace("postgresql://postgres@", f"postgresql://postgres:{password}@")


async def test_no_one_shot_command_shows_the_ledger_password(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(known_queues=frozenset({"testQueue"}))
    write_manifests(tmp_path / "m", 3)
    write_manifests(tmp_path / "m", 1, prefix="lost", queue_name="noSuchQueue")  # to retry
    outputs = Outputs()
    async with fresh_database() as dsn:
        env = _env(
            BATCHSUB_LEDGER=with_password(dsn),
            BATCHSUB_AMQP_URL=AMQP_URL,
            BATCHSUB_ENDPOINT=sim.url,
            BATCHSUB_PROJECT_ID=PROJECT,
            BATCHSUB_AUTH_TOKEN=TOKEN,
            BATCHSUB_LOG_LEVEL="debug",
        )
        commands: list[tuple[list[str], int]] = [
            (["config", "show"], 0),
            (["config", "show", "--json"], 0),
            (["validate", "m"], 0),
            (["plan", "m"], 0),
            (["plan", "m", "--check-remote", "--json"], 0),
            (["run", "m", "--report", "run.json", "--progress", "on"], 1),
            (["run", "m", "--report", "rerun.json"], 1),
            (["status"], 0),
            (["status", "--json"], 0),
            (["report", "--format", "json"], 0),
            (["report", "--format", "csv", "--output", "ledger.csv"], 0),
            (["retry", "--report", "retry.json"], 1),
        ]
        for args, expected in commands:
            assert await batchsub(outputs, args, env, tmp_path) == expected, outputs.blobs[-1]
        outputs.add("ledger rows", await ledger_dump(dsn))
    outputs.add_files(*(tmp_path / name for name in ("run.json", "rerun.json", "retry.json")))
    outputs.add_files(tmp_path / "ledger.csv")
    outputs.assert_clean()
    assert any(b"postgresql://postgres:***@" in data for _, data in outputs.blobs)


async def stop_after(
    outputs: Outputs, args: Sequence[str | Path], env: dict[str, str], cwd: Path, done: object
) -> int:
    """Start a daemon, SIGTERM it once ``done()`` is true, record its output; its exit code."""
    assert callable(done)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchsub", *map(str, args), env=env, cwd=cwd,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await eventually(lambda: bool(done()), timeout=30)
        proc.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(proc.communicate(), 20)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    outputs.add(f"{args[0]} stdout", out)
    outputs.add(f"{args[0]} stderr", err)
    assert proc.returncode is not None
    return proc.returncode


@pytest.mark.skipif(not broker_listening(), reason="RabbitMQ is not on 127.0.0.1:5672")
async def test_no_daemon_shows_the_ledger_or_broker_password(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator()
    names = write_manifests(tmp_path / "m", 3, prefix="queued")
    dropped = write_manifests(tmp_path / "inbox", 2, prefix="dropped")
    queue = f"batchsub-test-secrets-{os.getpid()}-{id(tmp_path):x}"
    outputs = Outputs()
    async with fresh_database() as dsn:
        env = _env(
            BATCHSUB_LEDGER=with_password(dsn),
            BATCHSUB_AMQP_URL=AMQP_URL,
            BATCHSUB_QUEUE=queue,
            BATCHSUB_ENDPOINT=sim.url,
            BATCHSUB_PROJECT_ID=PROJECT,
            BATCHSUB_AUTH_TOKEN=TOKEN,
            BATCHSUB_LOG_LEVEL="debug",
        )
        assert await batchsub(outputs, ["publish", "m"], env, tmp_path) == 0

        def created(wanted: list[str]) -> object:
            return lambda: set(wanted) <= {job.name for job in sim.store.jobs}

        code = await stop_after(
            outputs, ["consume", "--report", "consume.json"], env, tmp_path, created(names)
        )
        assert code == 0
        code = await stop_after(
            outputs, ["watch", "inbox", "--report", "watch.json", "--settle-time", "0"],
            env, tmp_path, created(dropped),
        )  # fmt: skip
        assert code == 0
        outputs.add("ledger rows", await ledger_dump(dsn))
        # The queues are the test's own: remove them.
        import aio_pika

        connection = await aio_pika.connect(AMQP_URL)
        async with connection, connection.channel() as channel:
            for name in (queue, queue + ".dead"):
                await channel.queue_delete(name)
    outputs.add_files(tmp_path / "consume.json", tmp_path / "watch.json")
    outputs.assert_clean()


async def test_no_failure_message_shows_a_password(tmp_path: Path) -> None:
    write_manifests(tmp_path / "m", 1)
    outputs = Outputs()
    async with fresh_database() as dsn:
        ledgers = [
            f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:1/x",  # nobody listening
            with_password(dsn).rsplit("/", 1)[0] + "/no_such_database",
            f"postgresql://postgres:{PG_PASSWORD}@127.0.0.1:5432/x?sslmode=bogus",
            f"postgresql://postgres:{PG_PASSWORD}@[127.0.0.1/x",  # unparsable
        ]
        for ledger in ledgers:
            env = _env(BATCHSUB_LEDGER=ledger)
            for args in (["run", "m", "--simulator"], ["status"]):
                assert await batchsub(outputs, args, env, tmp_path) == 2, outputs.blobs[-1]
    if broker_listening():
        bad = f"amqp://guest:{MQ_PASSWORD}@127.0.0.1:5672/"
        for amqp in (bad, f"amqp://guest:{MQ_PASSWORD}@127.0.0.1:1/"):
            env = _env(BATCHSUB_AMQP_URL=amqp, BATCHSUB_QUEUE="q", BATCHSUB_LEDGER="l.db")
            for args in (["publish", "m"], ["consume", "--simulator"]):
                assert await batchsub(outputs, args, env, tmp_path) == 2, outputs.blobs[-1]
    outputs.assert_clean()
