"""Reading, parsing and validating manifests in child processes, beside the event loop.

At no rate limit the event loop thread is what limits a run, and a good share of its time went
to reading, parsing and validating manifests (bench/results.md section 10). Child processes do
that work on another core; the loop thread sends them lists of paths and gets back plain tuples
over a pipe it watches itself: no extra thread in the parent competes with it for the GIL.

Children are forked (they inherit the imported code, so they start at once) before the run opens
its ledger, its sockets or any thread. They ignore SIGINT (the parent decides how to stop) and
exit when the parent is gone, even after kill -9. If a child cannot be started or dies, parsing
goes on in the parent: a pool failure never fails a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import os
import pickle
import signal
import struct
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from multiprocessing.process import BaseProcess
from typing import Any

import structlog

from batchsub.errors import one_line
from batchsub.jobs import InvalidManifest, JobSpec, ManifestItem
from batchsub.manifest import parse_manifest_file
from batchsub.text import printable

log = structlog.get_logger("batchsub.parser_pool")

# One file's items on the wire: plain tuples pickle and unpickle in C, dataclasses do not.
_Wire = tuple[Any, ...]
_JOB, _INVALID = 0, 1
# A message on a pipe: its length, then its pickle.
_HEADER = struct.Struct("!Q")
_PIPE_SIZE = 1 << 20  # fewer wake-ups per answer where Linux lets a pipe grow
_READ_SIZE = 1 << 20


class _ChildGone(Exception):
    """A child's pipe closed, or a child could not be reached."""


_Answer = asyncio.Future[list[list[_Wire]]]


class _Child:
    """One forked parser: its two pipes, the request it works on, and those queued behind.

    Requests go down one pipe, written whole (blocking) while the child waits for one;
    answers come up another that the event loop watches and reads without blocking,
    piece by piece, into ``inbox`` until a whole answer is there. uvloop makes a watched
    descriptor non-blocking, so the answer pipe is non-blocking on every loop.
    """

    def __init__(self, process: BaseProcess, requests: int, answers: int) -> None:
        self.process = process
        self.requests = requests
        self.answers = answers
        self.inbox = bytearray()
        self.working: _Answer | None = None  # one request in the pipe at a time
        self.queued: deque[tuple[tuple[list[str], bool], _Answer]] = deque()
        self.watched = False

    def answers_owed(self) -> list[_Answer]:
        owed = [answer for _, answer in self.queued]
        return owed if self.working is None else [self.working, *owed]

    def take_message(self) -> Any | None:
        """The first whole message in the inbox, unpickled, or None while it is partial."""
        if len(self.inbox) < _HEADER.size:
            return None
        (size,) = _HEADER.unpack_from(self.inbox)
        end = _HEADER.size + size
        if len(self.inbox) < end:
            return None
        message = pickle.loads(self.inbox[_HEADER.size : end])
        del self.inbox[:end]
        return message

    def close_pipes(self) -> None:
        for fd in (self.requests, self.answers):
            with contextlib.suppress(OSError):
                os.close(fd)


class ParserPool:
    """``workers`` forked processes that parse lists of manifest files; 0 parses in-process."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._children: list[_Child] = []
        self._turn: itertools.cycle[_Child] | None = None

    @property
    def in_children(self) -> bool:
        """True while child processes do the parsing."""
        return bool(self._children)

    def start(self) -> None:
        """Fork the children now; call it before any thread, socket or ledger is opened."""
        if self.workers <= 0 or self._children:
            return
        try:
            context = multiprocessing.get_context("fork")
            for _ in range(self.workers):
                self._children.append(self._fork(context))
        except (OSError, ValueError) as exc:
            log.warning("parser_pool.unavailable", error=str(exc), effect="parsing in-process")
            self.close()
            return
        self._turn = itertools.cycle(self._children)

    def _fork(self, context: Any) -> _Child:
        request_in, request_out = os.pipe()
        answer_in, answer_out = os.pipe()
        _grow(request_out)
        _grow(answer_out)
        # The child closes every parent end it inherits, so that each child sees its
        # request pipe close when the parent dies.
        inherited = [fd for c in self._children for fd in (c.requests, c.answers)]
        inherited += [request_out, answer_in]
        process = context.Process(
            target=_serve,
            args=(request_in, answer_out, inherited, os.getpid()),
            name="batchsub-parser",
            daemon=True,
        )
        try:
            process.start()
        except BaseException:
            for fd in (request_in, request_out, answer_in, answer_out):
                os.close(fd)
            raise
        os.close(request_in)
        os.close(answer_out)
        os.set_blocking(answer_in, False)
        return _Child(process, request_out, answer_in)

    async def parse(self, paths: Sequence[str], *, validate: bool) -> list[list[ManifestItem]]:
        """The items of each file of ``paths``, in order, each shown as ``printable(path)``."""
        if self._turn is None or not paths:  # no children (never started, or closed)
            return _parse_here(paths, validate)
        child = next(self._turn)
        try:
            wire = await self._ask(child, list(paths), validate)
        except _ChildGone as exc:
            log.warning("parser_pool.failed", error=str(exc), effect="parsing in-process")
            self.close()
            return _parse_here(paths, validate)
        return [[_from_wire(item) for item in items] for items in wire]

    def _ask(self, child: _Child, paths: list[str], validate: bool) -> _Answer:
        loop = asyncio.get_running_loop()
        if not child.watched:
            loop.add_reader(child.answers, self._answer, child)
            child.watched = True
        answer: _Answer = loop.create_future()
        child.queued.append(((paths, validate), answer))
        if child.working is None:
            self._send_next(child)
        return answer

    def _send_next(self, child: _Child) -> None:
        # Only while the child waits for a request: it is then reading, never writing, so a
        # request bigger than the pipe's buffer cannot deadlock against an answer.
        while child.queued and child.queued[0][1].done():  # cancelled while queued
            child.queued.popleft()
        if not child.queued:
            return
        request, answer = child.queued.popleft()
        try:
            _write_message(child.requests, request)
        except OSError as exc:
            child.queued.appendleft((request, answer))
            self._lost(child, exc)
            return
        child.working = answer

    def _answer(self, child: _Child) -> None:
        # On the loop thread, when the answer pipe is readable: read what is there; act on
        # a whole answer, or on EOF.
        try:
            while True:
                try:
                    data = os.read(child.answers, _READ_SIZE)
                except BlockingIOError:
                    break
                if not data:
                    raise EOFError("the pipe closed")
                child.inbox += data
            wire = child.take_message()
        except Exception as exc:  # EOF, a broken pipe, or a garbled answer: the child is lost
            self._lost(child, exc)
            return
        if wire is None:
            return  # more of the answer is on its way
        answer, child.working = child.working, None
        if answer is not None and not answer.done():  # done: cancelled, the source stopped
            answer.set_result(wire)
        self._send_next(child)

    def _lost(self, child: _Child, exc: BaseException) -> None:
        code = child.process.exitcode
        reason = f"parser process ended (exit code {code}): {one_line(exc)}"
        for answer in child.answers_owed():
            if not answer.done():
                answer.set_exception(_ChildGone(reason))
        child.working = None
        child.queued.clear()
        self._unwatch(child)

    def _unwatch(self, child: _Child) -> None:
        if child.watched:
            try:
                asyncio.get_running_loop().remove_reader(child.answers)
            except (RuntimeError, ValueError, OSError):
                pass  # no loop any more, or the pipe is already closed
            child.watched = False

    def close(self) -> None:
        """Stop the children: their pipes close, and each exits after the list in hand."""
        children, self._children, self._turn = self._children, [], None
        for child in children:
            self._unwatch(child)
            for answer in child.answers_owed():
                answer.cancel()
            child.working = None
            child.queued.clear()
            child.close_pipes()
        for child in children:
            child.process.join(timeout=2)
            if child.process.is_alive():
                child.process.kill()


def _parse_here(paths: Sequence[str], validate: bool) -> list[list[ManifestItem]]:
    return [parse_manifest_file(path, printable(path), validate=validate) for path in paths]


def _serve(requests: int, answers: int, inherited: list[int], parent_pid: int) -> None:
    """A child's loop: a list of paths in, their items out, until the request pipe closes."""
    for fd in inherited:
        os.close(fd)
    # A signal to the child must not be written to the parent's event loop wakeup pipe,
    # which the fork shared: the parent would act on a signal it never got.
    signal.set_wakeup_fd(-1)
    # Ctrl-C reaches the whole process group: the parent drains or stops, the child waits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    threading.Thread(target=_exit_with_parent, args=(parent_pid,), daemon=True).start()
    while True:
        try:
            paths, validate = _read_message(requests)
            items = _parse_here(paths, validate)
            _write_message(answers, [[_to_wire(item) for item in found] for found in items])
        except (EOFError, OSError):  # the parent closed its end, or is gone
            return


def _exit_with_parent(parent_pid: int) -> None:
    # Belt and braces beside the pipe's EOF: a descriptor copied elsewhere could keep the
    # pipe open after a kill -9 of the parent, and the child must not outlive it.
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(0)


def _grow(fd: int) -> None:
    if sys.platform == "linux":
        import fcntl

        with contextlib.suppress(OSError):  # above /proc/sys/fs/pipe-max-size: keep 64 KiB
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)


def _write_message(fd: int, message: object) -> None:
    """Write one message whole, blocking until the reader has taken what the pipe cannot hold."""
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    _write_all(fd, _HEADER.pack(len(data)))
    _write_all(fd, data)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _read_message(fd: int) -> Any:
    """Read one whole message from a blocking pipe; EOFError when it closes."""
    (size,) = _HEADER.unpack(_read_exactly(fd, _HEADER.size))
    return pickle.loads(_read_exactly(fd, size))


def _read_exactly(fd: int, size: int) -> bytes:
    chunks: list[bytes] = []
    while size:
        chunk = os.read(fd, min(size, _READ_SIZE))
        if not chunk:
            raise EOFError("the pipe closed")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _to_wire(item: ManifestItem) -> _Wire:
    if isinstance(item, JobSpec):
        return (_JOB, item.name, item.body, item.body_hash, item.source, item.validated)
    if isinstance(item, InvalidManifest):
        return (_INVALID, item.source, item.error, item.name)
    raise TypeError(f"parse_manifest_file gave {type(item).__name__}")  # never: it parses only


def _from_wire(wire: _Wire) -> ManifestItem:
    if wire[0] == _JOB:
        _, name, body, body_hash, source, validated = wire
        return JobSpec(name, body, body_hash, source, validated)
    _, source, error, name = wire
    return InvalidManifest(source, error, name)
