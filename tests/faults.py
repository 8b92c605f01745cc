"""Fault injection for the tests: a TCP proxy, frozen and killed processes, PostgreSQL outages.

- ``Proxy(port)``: a TCP proxy on 127.0.0.1 in front of a server (PostgreSQL, the simulator),
  on a thread with its own event loop, so it serves worker subprocesses as well as the test.
  The test drives it: ``pass_through()``, ``delay(s)`` each chunk, ``freeze()`` (connections
  stay open, nothing is forwarded; ``answers_only`` holds only what the server sends back),
  ``cut()`` (every connection reset), ``refuse()`` (new connections refused) and ``accept()``.
- ``paused(proc)``: SIGSTOP a real subprocess, SIGCONT it on leaving; ``kill(proc)``: SIGKILL.
- ``restart_postgres()``, ``postgres_stopped()``: the local cluster restarted or stopped through
  ``pg_ctlcluster``; ``postgres_control_problem()`` says why that is impossible here (for a
  skip). PostgreSQL is always started again, and ``ensure_postgres_running()`` is the
  session's safety net. Other tests share the server: keep outages to a few seconds.
- ``small_filesystem(path, size)``: a tmpfs of ``size`` mounted there (root only: None and a
  reason otherwise), and ``fill(directory)``, which takes every free byte of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from tests.pg import HOST, PORT, postgres_listening

_T = TypeVar("_T")
_CHUNK = 65536


@dataclass(frozen=True, slots=True)
class _Mode:
    frozen: bool = False
    answers_only: bool = False  # frozen: only what the server sends back is held
    delay: float = 0.0


@dataclass(eq=False, slots=True)
class _Link:
    """One proxied connection: the client's and the server's stream writers."""

    client: asyncio.StreamWriter
    server: asyncio.StreamWriter


class Proxy:
    """A TCP proxy from 127.0.0.1:``port`` (a free one) to ``target_host``:``target_port``.

    Use as a context manager; every method may be called from any thread or event loop.
    """

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.accepted = 0  # connections accepted so far
        self._mode = _Mode()
        self._changed: asyncio.Event | None = None
        self._links: set[_Link] = set()
        self._server: asyncio.Server | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> Proxy:
        self._thread.start()
        self._run(self._listen())
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def links(self) -> int:
        """Connections open through the proxy now."""
        return len(self._links)

    def pass_through(self) -> None:
        """Forward everything at once (thaws a freeze, ends a delay)."""
        self._set(_Mode())

    def delay(self, seconds: float) -> None:
        """Hold each chunk ``seconds`` before forwarding it, both ways."""
        self._set(_Mode(delay=seconds))

    def freeze(self, *, answers_only: bool = False) -> None:
        """Forward nothing (or, ``answers_only``, nothing the server sends); keep connections."""
        self._set(_Mode(frozen=True, answers_only=answers_only))

    def cut(self) -> None:
        """Reset every open connection (a TCP RST to both ends)."""

        async def cut() -> None:
            for link in list(self._links):
                for writer in (link.client, link.server):
                    _reset(writer)

        self._run(cut())

    def refuse(self) -> None:
        """Stop listening: new connections are refused; open ones go on."""

        async def refuse() -> None:
            if self._server is not None:
                self._server.close()
                self._server = None

        self._run(refuse())

    def accept(self) -> None:
        """Listen again on the same port after ``refuse()``."""
        self._run(self._listen())

    def close(self) -> None:
        """Reset every connection, stop listening and end the proxy's thread."""
        if not self._thread.is_alive():
            return
        self.refuse()
        self.cut()

        async def finish() -> None:  # every connection's task ends before the loop does
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self._run(finish())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    # --- on the proxy's own loop -------------------------------------------------------------

    def _run(self, coro: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    def _set(self, mode: _Mode) -> None:
        async def change() -> None:
            self._mode = mode
            if self._changed is not None:
                self._changed.set()
            self._changed = asyncio.Event()

        self._run(change())

    async def _listen(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(
                self._handle, "127.0.0.1", self.port, reuse_address=True
            )
            self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)
            return
        link = _Link(writer, up_writer)
        self._links.add(link)
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, to_server=True),
                self._pipe(up_reader, writer, to_server=False),
            )
        finally:
            self._links.discard(link)
            for end in (writer, up_writer):
                end.close()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, to_server: bool
    ) -> None:
        try:
            while data := await reader.read(_CHUNK):
                await self._gate(to_server)
                writer.write(data)
                await writer.drain()
        except OSError:
            pass  # reset by cut() or by either end
        finally:
            writer.close()

    async def _gate(self, to_server: bool) -> None:
        while True:
            mode = self._mode
            if mode.frozen and not (mode.answers_only and to_server):
                if self._changed is None:
                    self._changed = asyncio.Event()
                await self._changed.wait()
                continue
            if mode.delay:
                await asyncio.sleep(mode.delay)
            return


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST rather than a FIN, as a broken link or a killed server does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


def via(dsn: str, proxy: Proxy) -> str:
    """``dsn`` (``postgresql://user@host:port/db``) pointed at ``proxy`` instead."""
    pointed, count = re.subn(r"@[^@/]+/", f"@127.0.0.1:{proxy.port}/", dsn, count=1)
    assert count == 1, f"not a DSN with a host: {dsn}"  # else the fault would miss its target
    return pointed


# --- processes --------------------------------------------------------------------------------


@contextlib.contextmanager
def paused(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """SIGSTOP ``proc`` (frozen, as by a VM pause or a long GC); SIGCONT it on leaving."""
    proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``proc`` and reap it."""
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


# --- PostgreSQL -------------------------------------------------------------------------------

_PG_CTL = shutil.which("pg_ctlcluster")
_PG_CONF = Path("/etc/postgresql")


def postgres_control_problem() -> str | None:
    """Why this test run cannot restart the local PostgreSQL, or None when it can."""
    # Several developers' test runs can share one server: one restarting it fails the others.
    if os.environ.get("BATCHSUB_TEST_NO_PG_RESTART"):
        return "BATCHSUB_TEST_NO_PG_RESTART is set (the server is shared with other test runs)"
    if _PG_CTL is None:
        return "pg_ctlcluster is not installed"
    if os.geteuid() != 0:
        return "restarting PostgreSQL needs root (pg_ctlcluster)"
    if not _PG_CONF.is_dir() or not any(_PG_CONF.iterdir()):
        return f"no PostgreSQL cluster under {_PG_CONF}"
    if not postgres_listening():
        return f"no PostgreSQL listening on {HOST}:{PORT}"
    return None


def _pg_ctl(action: str) -> None:
    assert _PG_CTL is not None
    version = sorted(p.name for p in _PG_CONF.iterdir())[0]
    subprocess.run(
        [_PG_CTL, "--skip-systemctl-redirect", version, "main", action],
        check=True,
        capture_output=True,
        timeout=60,
    )


def _wait_listening(timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not postgres_listening():
        if time.monotonic() > deadline:
            raise TimeoutError(f"PostgreSQL did not listen on {HOST}:{PORT} in {timeout} s")
        time.sleep(0.05)


def restart_postgres() -> None:
    """Restart the local cluster (fast mode: every session ends at once); wait until it listens."""
    try:
        _pg_ctl("restart")
    finally:
        ensure_postgres_running()


@contextlib.contextmanager
def postgres_stopped() -> Iterator[None]:
    """Stop the local cluster for the block; it is started again whatever happens."""
    _pg_ctl("stop")
    try:
        yield
    finally:
        ensure_postgres_running()


def ensure_postgres_running() -> None:
    """Start the local cluster if it is not listening (and can be started); wait for it."""
    if postgres_listening() or _PG_CTL is None or os.geteuid() != 0:
        return
    with contextlib.suppress(subprocess.CalledProcessError):  # already starting
        _pg_ctl("start")
    _wait_listening()


# --- a small file system ----------------------------------------------------------------------


@contextlib.contextmanager
def small_filesystem(path: Path, size: str) -> Iterator[str | None]:
    """Mount a tmpfs of ``size`` (e.g. "4m") at ``path``; yields None, or why it cannot."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield "mounting a tmpfs needs root"
        return
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        yield f"cannot mount a tmpfs here: {mounted.stderr.strip()}"
        return
    try:
        yield None
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def fill(directory: Path) -> Path:
    """Write a file into ``directory`` until its file system is full; the file's path."""
    filler = directory / "filler"
    block = b"\0" * _CHUNK
    with filler.open("wb", buffering=0) as out:
        try:
            while True:
                out.write(block)
        except OSError as exc:
            if exc.errno != errno.ENOSPC:
                raise
        with contextlib.suppress(OSError):  # the last few bytes
            while True:
                out.write(b"\0" * 512)
    return filler
