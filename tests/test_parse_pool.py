"""Manifest parsing in forked children: the same items as in-process, and never a lost run."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import cast

import pytest

from batchsub import eventloop
from batchsub.jobs import JobSpec, ManifestItem
from batchsub.manifest import parse_manifest_file
from batchsub.parse_pool import ParserPool
from batchsub.sources.directory import DirectorySource, iter_manifest_paths
from tests.support import REPO, write_manifests


@pytest.fixture
async def pool() -> AsyncIterator[ParserPool]:
    parsers = ParserPool(2)
    parsers.start()
    assert parsers.in_children
    yield parsers
    parsers.close()


def every_example() -> list[str]:
    """Good and broken manifests of every kind, JSON and YAML, one job and lists."""
    return [
        str(path)
        for folder in ("examples/manifests", "examples/broken")
        for path in iter_manifest_paths(REPO / folder)
    ]


async def test_children_parse_exactly_as_the_parent_does(pool: ParserPool) -> None:
    paths = every_example()
    for validate in (True, False):
        here = [parse_manifest_file(p, p, validate=validate) for p in paths]
        assert await pool.parse(paths, validate=validate) == here
        # JobSpec equality ignores `validated`; compare it too.
        flags = [[isinstance(i, JobSpec) and i.validated for i in items] for items in here]
        got = await pool.parse(paths, validate=validate)
        assert [[isinstance(i, JobSpec) and i.validated for i in items] for items in got] == flags


async def test_answers_come_back_in_order_from_many_requests(
    pool: ParserPool, tmp_path: Path
) -> None:
    write_manifests(tmp_path, 60)
    paths = [str(p) for p in iter_manifest_paths(tmp_path)]
    chunks = [paths[i : i + 7] for i in range(0, len(paths), 7)]
    answers = await asyncio.gather(*(pool.parse(c, validate=True) for c in chunks))
    names = [i.name for items in answers for file_items in items for i in file_items]
    assert names == [parse_manifest_file(p, p)[0].name for p in paths]


async def test_a_dead_child_means_parsing_in_process(pool: ParserPool) -> None:
    paths = every_example()
    for child in pool._children:
        assert child.process.pid is not None
        os.kill(child.process.pid, signal.SIGKILL)
        child.process.join(timeout=5)
    got = await pool.parse(paths, validate=True)
    assert got == [parse_manifest_file(p, p) for p in paths]
    assert not pool.in_children  # later chunks no longer try the dead pool


async def test_ctrl_c_to_the_process_group_does_not_stop_a_child(pool: ParserPool) -> None:
    child = pool._children[0]
    assert child.process.pid is not None
    os.kill(child.process.pid, signal.SIGINT)
    await asyncio.sleep(0.2)
    assert child.process.is_alive()
    paths = every_example()[:3]
    assert await pool.parse(paths, validate=True) == [parse_manifest_file(p, p) for p in paths]


async def test_close_ends_the_children() -> None:
    pool = ParserPool(1)
    pool.start()
    process = pool._children[0].process
    pool.close()
    assert not process.is_alive()
    assert not pool.in_children
    paths = every_example()[:2]
    assert await pool.parse(paths, validate=True) == [parse_manifest_file(p, p) for p in paths]


async def test_no_workers_parses_in_process() -> None:
    pool = ParserPool(0)
    pool.start()
    assert not pool.in_children
    paths = every_example()
    assert await pool.parse(paths, validate=True) == [parse_manifest_file(p, p) for p in paths]


async def directory_items(source: DirectorySource) -> list[ManifestItem]:
    return [item async for item in source.items()]


async def test_a_directory_reads_the_same_through_the_pool(
    pool: ParserPool, tmp_path: Path
) -> None:
    # More files than one chunk, a duplicate name across files, and broken ones.
    write_manifests(tmp_path / "m", 600)
    (tmp_path / "m" / "zz-dup.json").write_text('{"name": "job-0001"}')
    for broken in (REPO / "examples/broken").iterdir():
        (tmp_path / "m" / broken.name).write_bytes(broken.read_bytes())
    plain = await directory_items(DirectorySource(tmp_path / "m"))
    pooled = await directory_items(DirectorySource(tmp_path / "m", parser=pool))
    assert pooled == plain
    assert len(plain) > 600


async def test_requests_bigger_than_the_pipe_buffer_do_not_deadlock(tmp_path: Path) -> None:
    # Paths of ~3,000 characters: a chunk of 256 of them is ~800 KB, several socket buffers,
    # and with one child the next chunk is asked for while it parses the first.
    deep = tmp_path
    for index in range(12):
        deep = deep / (f"{index:02d}" + "d" * 240)
    write_manifests(deep, 600)
    plain = await directory_items(DirectorySource(tmp_path))
    one = ParserPool(1)
    one.start()
    try:
        pooled = await asyncio.wait_for(
            directory_items(DirectorySource(tmp_path, parser=one)), timeout=20
        )
        assert one.in_children
    finally:
        one.close()
    assert pooled == plain and len(plain) == 600


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_answers_bigger_than_the_pipe_arrive_whole_on_every_loop(
    loop: eventloop.EventLoopChoice, tmp_path: Path
) -> None:
    # ~8 KB bodies: a chunk's answer is ~2 MB, more than even a grown pipe holds, so it
    # arrives in pieces. uvloop makes a watched pipe non-blocking: a reader expecting the
    # whole answer at once lost the child at the first chunk and parsed in-process.
    write_manifests(tmp_path, 300, entrypoint_args="x" * 8000)

    async def through_the_pool() -> tuple[list[ManifestItem], bool]:
        assert type(asyncio.get_running_loop()).__module__.startswith(loop)
        one = ParserPool(1)
        one.start()
        try:
            items = await asyncio.wait_for(
                directory_items(DirectorySource(tmp_path, parser=one)), timeout=20
            )
            return items, one.in_children
        finally:
            one.close()

    pooled, still_in_children = eventloop.run(through_the_pool(), loop)
    assert still_in_children
    assert pooled == eventloop.run(directory_items(DirectorySource(tmp_path)), loop)
    assert len(pooled) == 300 and all(isinstance(item, JobSpec) for item in pooled)


async def test_stopping_early_leaves_no_answer_behind(pool: ParserPool, tmp_path: Path) -> None:
    write_manifests(tmp_path, 600)
    source = DirectorySource(tmp_path, parser=pool)
    items = cast(AsyncGenerator[ManifestItem, None], source.items())
    first = await anext(items)
    await items.aclose()  # the next chunk's parse is under way: it is cancelled, not awaited
    assert first.name is not None
    paths = every_example()[:2]
    assert await pool.parse(paths, validate=True) == [parse_manifest_file(p, p) for p in paths]


_PARENT = """
import asyncio, sys, time
from batchsub.parse_pool import ParserPool
pool = ParserPool(2)
pool.start()
print(" ".join(str(c.process.pid) for c in pool._children), flush=True)
time.sleep(60)
"""


@pytest.mark.slow
def test_children_exit_when_the_parent_is_killed() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert parent.stdout is not None
    with parent.stdout:
        pids = [int(p) for p in parent.stdout.readline().split()]
    assert len(pids) == 2
    parent.kill()
    parent.wait(timeout=10)
    deadline = time.monotonic() + 10
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [pid for pid in pids if _running(pid)]
    assert alive == []


def _running(pid: int) -> bool:
    # A child re-parented to init and reaped is gone; a zombie counts as gone too.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"
