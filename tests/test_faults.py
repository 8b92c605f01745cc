"""The fault-injection layer itself: the proxy's modes against an echo server, paused processes."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.faults import Proxy, fill, kill, paused, small_filesystem


@pytest.fixture
async def echo_port() -> AsyncIterator[int]:
    """A TCP echo server on 127.0.0.1 in the test's loop."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


@pytest.fixture
def proxy(echo_port: int) -> Iterator[Proxy]:
    with Proxy(echo_port) as running:
        yield running


async def roundtrip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes, timeout: float = 1
) -> bytes:
    writer.write(data)
    await writer.drain()
    return await asyncio.wait_for(reader.readexactly(len(data)), timeout)


async def test_pass_through_delay_and_freeze(proxy: Proxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    assert await roundtrip(reader, writer, b"hello") == b"hello"
    assert proxy.links == 1

    proxy.delay(0.2)
    started = time.monotonic()
    assert await roundtrip(reader, writer, b"slow") == b"slow"
    assert time.monotonic() - started >= 0.4  # held once each way

    proxy.freeze()
    with pytest.raises(TimeoutError):
        await roundtrip(reader, writer, b"frozen", timeout=0.3)
    assert proxy.links == 1  # the connection stays open
    proxy.pass_through()
    assert await asyncio.wait_for(reader.readexactly(6), 1) == b"frozen"  # held, not lost
    writer.close()


async def test_a_freeze_of_answers_lets_requests_through(proxy: Proxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    proxy.freeze(answers_only=True)
    with pytest.raises(TimeoutError):
        await roundtrip(reader, writer, b"ping", timeout=0.3)
    proxy.pass_through()
    assert await asyncio.wait_for(reader.readexactly(4), 1) == b"ping"
    writer.close()


async def test_cut_resets_connections_and_refuse_turns_new_ones_away(proxy: Proxy) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    await roundtrip(reader, writer, b"x")
    proxy.cut()
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        await roundtrip(reader, writer, b"y")
    writer.close()

    proxy.refuse()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", proxy.port)
    proxy.accept()
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    assert await roundtrip(reader, writer, b"back") == b"back"
    writer.close()


def process_state(proc: subprocess.Popen[bytes]) -> str:
    """The state letter of /proc/PID/stat: R, S, T (stopped)..."""
    return Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def test_paused_stops_and_resumes_a_process_and_kill_ends_it() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with paused(proc):
            time.sleep(0.1)
            assert process_state(proc) == "T"
        time.sleep(0.1)
        assert process_state(proc) in {"S", "R"}
    finally:
        kill(proc)
    assert proc.returncode == -9


def test_fill_takes_every_byte_of_a_small_filesystem(tmp_path: Path) -> None:
    with small_filesystem(tmp_path / "disk", "1m") as problem:
        if problem is not None:
            pytest.skip(problem)
        filler = fill(tmp_path / "disk")
        with pytest.raises(OSError, match="No space left"):
            (tmp_path / "disk" / "more").write_bytes(b"x" * 8192)
        filler.unlink()
        (tmp_path / "disk" / "more").write_bytes(b"x" * 8192)
