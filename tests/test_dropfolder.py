"""DropFolderSource: readiness, ignored names, claims and where each file ends up."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import time
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import structlog

from batchsub.jobs import JobResult, JobSpec, ManifestItem, Outcome
from batchsub.metrics import Metrics, start_metrics_server
from batchsub.report import RunAccount
from batchsub.runner import run_source
from batchsub.settings import Settings
from batchsub.sources.dropfolder import DropFolderSource
from batchsub.sources.filing import SettleTracker, is_manifest_name
from tests.fs_support import odd_entries, unwritable
from tests.run_support import settings_for
from tests.support import SimulatorFactory, drop, eventually, job, names_in


def fast(inbox: Path) -> DropFolderSource:
    """A drop folder that reads files at once and rescans often."""
    return DropFolderSource(inbox, settle_time=0.0, rescan_interval=0.05, retry_delay=0.0)


@contextlib.asynccontextmanager
async def running(settings: Settings, source: DropFolderSource) -> AsyncIterator[asyncio.Task[int]]:
    """The real run path over ``source`` in a task; stopped and closed on exit."""
    source.prepare()
    task = asyncio.create_task(run_source(settings, source, RunAccount(), endless=True))
    try:
        yield task
    finally:
        source.stop()
        await asyncio.wait_for(task, 10)
        await source.close()


# --- readiness ------------------------------------------------------------------------------


def test_a_file_is_ready_once_unchanged_for_the_settle_time() -> None:
    tracker = SettleTracker(1.0)
    assert tracker.observe("a.json", (10, 1), now=100.0) is False
    assert tracker.next_due() == 101.0
    assert tracker.observe("a.json", (10, 1), now=100.9) is False
    assert tracker.observe("a.json", (20, 2), now=100.95) is False  # grew: starts again
    assert tracker.observe("a.json", (20, 2), now=101.9) is False
    assert tracker.observe("a.json", (20, 2), now=101.95) is True
    assert tracker.observe("a.json", (20, 3), now=102.0) is False  # touched: starts again
    tracker.retain([])
    assert tracker.next_due() is None
    assert SettleTracker(0.0).observe("b.json", (1, 1), now=5.0) is True


@pytest.mark.parametrize(
    ("name", "read"),
    [
        ("a.json", True),
        ("a.yaml", True),
        ("a.YML", True),
        (".a.json", False),
        ("a.json.tmp", False),
        ("a.tmp", False),
        ("a.json.part", False),
        ("a.json.swp", False),
        ("a.json~", False),
        ("a.error.json", False),
        ("a.txt", False),
        ("json", False),
    ],
)
def test_which_names_are_manifests(name: str, read: bool) -> None:
    assert is_manifest_name(name) is read


async def test_a_file_written_in_pieces_is_read_only_when_complete(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    source = DropFolderSource(inbox, settle_time=0.2, rescan_interval=0.02)
    source.prepare()
    body = orjson.dumps(job("pieces"))
    path = inbox / "pieces.json"
    path.write_bytes(body[:10])
    items = source.items()
    first = asyncio.ensure_future(anext(items))
    await asyncio.sleep(0.15)
    with path.open("ab") as out:
        out.write(body[10:])
    finished_writing = time.monotonic()
    try:
        item = await asyncio.wait_for(first, 5)
        claimed_after = time.monotonic() - finished_writing
    finally:
        await items.aclose()
        await source.close()
    assert isinstance(item, JobSpec) and item.name == "pieces"  # the whole file was read
    assert claimed_after >= 0.2


@pytest.mark.parametrize("poll", [False, True])
async def test_a_dropped_file_is_seen_by_events_not_only_by_rescans(
    tmp_path: Path, poll: bool
) -> None:
    inbox = tmp_path / "inbox"
    source = DropFolderSource(inbox, settle_time=0.0, rescan_interval=60.0, poll=poll)
    items = source.items()
    waiting = asyncio.ensure_future(anext(items))
    try:
        await asyncio.sleep(0.3)  # the first scan found nothing; the next rescan is 60 s away
        drop(inbox, "event.json", job("event"))
        item = await asyncio.wait_for(waiting, 3)
    finally:
        await items.aclose()
        await source.close()
    assert item.name == "event"


async def test_a_file_name_that_is_not_utf8_does_not_stop_the_events(tmp_path: Path) -> None:
    # watchfiles cannot decode such a name and its watcher dies on it: without a restart the
    # daemon would see new files only at each rescan (30 s by default).
    inbox = tmp_path / "inbox"
    source = DropFolderSource(inbox, settle_time=0.0, rescan_interval=60.0)
    items = source.items()
    try:
        first = asyncio.ensure_future(anext(items))
        await asyncio.sleep(0.3)  # the first scan found nothing; the next rescan is 60 s away
        drop(inbox, os.fsdecode(b"caf\xe9.json"), job("odd"))
        odd = await asyncio.wait_for(first, 3)
        await asyncio.sleep(0.5)  # the odd name's events have reached the watcher
        drop(inbox, "later.json", job("later"))
        later = await asyncio.wait_for(anext(items), 3)
    finally:
        await items.aclose()
        await source.close()
    assert (odd.name, later.name) == ("odd", "later")


async def test_ignored_names_are_left_alone(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    source = fast(inbox)
    source.prepare()
    ignored = [".hidden.json", "a.json.tmp", "b.json.part", "c.json.swp", "d.json~", "e.txt"]
    for name in ignored:
        (inbox / name).write_bytes(orjson.dumps(job("ignored")))
    (inbox / "sub").mkdir()
    (inbox / "sub" / "deep.json").write_bytes(orjson.dumps(job("deep")))
    drop(inbox, "real.json", job("real"))
    items = source.items()
    try:
        item = await asyncio.wait_for(anext(items), 5)
        late = asyncio.ensure_future(anext(items))
        await asyncio.sleep(0.3)  # several rescans: nothing else is claimed
        assert not late.done()
        late.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await late
    finally:
        await items.aclose()
        await source.close()
    assert item.name == "real"
    assert names_in(inbox) == sorted([*ignored, "real.json"])  # given back on close
    assert (inbox / "sub" / "deep.json").exists()


# --- where files go -------------------------------------------------------------------------


def result(item: ManifestItem, outcome: Outcome, error: str | None = None) -> JobResult:
    return JobResult(item.source, item.name, outcome, error=error)


async def take(
    source: DropFolderSource, count: int
) -> tuple[AsyncGenerator[ManifestItem, None], list[Any]]:
    items = source.items()
    taken = [await asyncio.wait_for(anext(items), 5) for _ in range(count)]
    return items, taken


async def test_a_list_file_moves_only_when_every_job_has_a_result(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    source = fast(inbox)
    source.prepare()
    drop(inbox, "list.json", [job("l0"), job("l1"), job("l2")])
    items, (a, b, c) = await take(source, 3)
    try:
        assert names_in(inbox) == [] and names_in(inbox / "processing") == ["list.json"]
        assert source.files_waiting() == 1
        await source.finish(c, result(c, Outcome.CREATED))
        await source.finish(a, result(a, Outcome.ALREADY_CREATED))
        assert names_in(inbox / "processing") == ["list.json"]
        await source.finish(b, result(b, Outcome.CREATED))
        assert names_in(inbox / "processing") == []
        assert names_in(inbox / "done") == ["list.json"]
        assert source.files_waiting() == 0
    finally:
        await items.aclose()
        await source.close()


async def test_a_file_with_a_failed_job_goes_to_failed_with_every_job_explained(
    tmp_path: Path,
) -> None:
    inbox = tmp_path / "inbox"
    source = fast(inbox)
    source.prepare()
    drop(inbox, "mixed.yaml", "- {name: ok, queue_name: q}\n- {name: bad, queue_name: nope}\n")
    items, (ok, bad) = await take(source, 2)
    try:
        await source.finish(bad, result(bad, Outcome.FAILED, "DLI.0002 HTTP 400: no such queue"))
        assert names_in(inbox / "failed") == []  # waits for the other job
        await source.finish(ok, result(ok, Outcome.CREATED))
    finally:
        await items.aclose()
        await source.close()
    assert names_in(inbox / "failed") == ["mixed.error.json", "mixed.yaml"]
    error = json.loads((inbox / "failed" / "mixed.error.json").read_text())
    assert error["file"] == "mixed.yaml"
    assert "1 of 2 jobs not created" in error["reason"] and "no such queue" in error["reason"]
    assert error["jobs"] == [
        {"source": f"{inbox}/mixed.yaml#0", "name": "ok", "outcome": "created", "error": None},
        {
            "source": f"{inbox}/mixed.yaml#1",
            "name": "bad",
            "outcome": "failed",
            "error": "DLI.0002 HTTP 400: no such queue",
        },
    ]


async def test_an_unresolved_job_sends_its_file_back_to_the_folder(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    source = DropFolderSource(inbox, settle_time=0.0, rescan_interval=0.05, retry_delay=60.0)
    source.prepare()
    drop(inbox, "a.json", job("a"))
    items, (a,) = await take(source, 1)
    try:
        await source.finish(a, result(a, Outcome.UNRESOLVED, "claimed by another batchsub worker"))
        assert names_in(inbox) == ["a.json"]
        again = asyncio.ensure_future(anext(items))
        await asyncio.sleep(0.3)
        assert not again.done()  # not claimed again before the retry delay
        again.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await again
    finally:
        await items.aclose()
        await source.close()
    assert names_in(inbox) == ["a.json"]


async def test_close_returns_files_whose_jobs_were_not_all_done(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    source = fast(inbox)
    source.prepare()
    drop(inbox, "two.json", [job("t0"), job("t1")])
    drop(inbox, "untouched.json", job("u"))
    items, (t0,) = await take(source, 1)
    await source.finish(t0, result(t0, Outcome.CREATED))
    await items.aclose()
    await source.close()
    assert names_in(inbox) == ["two.json", "untouched.json"]
    assert names_in(inbox / "processing") == []


async def test_stop_ends_items_while_it_waits_for_files(tmp_path: Path) -> None:
    source = DropFolderSource(tmp_path / "inbox", settle_time=0.0, rescan_interval=60.0)
    items = source.items()
    waiting = asyncio.ensure_future(anext(items))
    await asyncio.sleep(0.1)
    source.stop()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(waiting, 1)
    await source.close()


# --- recovery and name clashes --------------------------------------------------------------


def test_files_left_in_processing_are_recovered_at_start(tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    (inbox / "processing").mkdir(parents=True)
    (inbox / "processing" / "crashed.json").write_bytes(orjson.dumps(job("crashed")))
    (inbox / "processing" / "clash.json").write_bytes(b"old")
    (inbox / "clash.json").write_bytes(b"new")

    DropFolderSource(inbox).prepare()

    assert names_in(inbox / "processing") == []
    assert (inbox / "crashed.json").exists()
    assert (inbox / "clash.json").read_bytes() == b"new"  # never overwritten
    [suffixed] = [n for n in names_in(inbox) if n.startswith("clash.") and n != "clash.json"]
    assert suffixed.endswith("-1.json") and (inbox / suffixed).read_bytes() == b"old"
    assert {p.name for p in inbox.iterdir() if p.is_dir()} == {"processing", "done", "failed"}


async def test_recovered_and_new_files_are_sent_once(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator()
    inbox = tmp_path / "inbox"
    (inbox / "processing").mkdir(parents=True)
    (inbox / "processing" / "crashed.json").write_bytes(orjson.dumps(job("crashed")))
    drop(inbox, "new.json", job("new"))
    source = fast(inbox)
    async with running(settings_for(sim.url, tmp_path), source):
        await eventually(lambda: len(names_in(inbox / "done")) == 2)
    assert sorted(j.name for j in sim.store.jobs) == ["crashed", "new"]


async def test_names_taken_in_done_and_failed_are_never_overwritten(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator()
    inbox = tmp_path / "inbox"
    for folder in ("done", "failed"):
        (inbox / folder).mkdir(parents=True)
    (inbox / "done" / "a.json").write_bytes(b"older a")
    (inbox / "failed" / "b.json").write_bytes(b"older b")
    (inbox / "failed" / "b.error.json").write_bytes(b"older reason")
    drop(inbox, "a.json", job("a"))
    drop(inbox, "b.json", job("b", cu_number="2"))
    source = fast(inbox)
    async with running(settings_for(sim.url, tmp_path), source):
        await eventually(
            lambda: len(names_in(inbox / "done")) == 2 and len(names_in(inbox / "failed")) == 4
        )
    assert (inbox / "done" / "a.json").read_bytes() == b"older a"
    assert (inbox / "failed" / "b.json").read_bytes() == b"older b"
    assert (inbox / "failed" / "b.error.json").read_bytes() == b"older reason"
    [new_a] = [n for n in names_in(inbox / "done") if n != "a.json"]
    assert orjson.loads((inbox / "done" / new_a).read_bytes())["name"] == "a"
    [new_b] = [n for n in names_in(inbox / "failed") if n.endswith("-1.json")]
    error = json.loads((inbox / "failed" / new_b.replace(".json", ".error.json")).read_text())
    assert error["jobs"][0]["outcome"] == "invalid" and "cu_number" in error["jobs"][0]["error"]


async def test_a_manifest_dropped_again_after_a_fix_is_processed(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator()
    inbox = tmp_path / "inbox"
    source = fast(inbox)
    async with running(settings_for(sim.url, tmp_path), source):
        drop(inbox, "fixme.json", job("fixme", parallel_numbr=2))
        await eventually(lambda: "fixme.error.json" in names_in(inbox / "failed"))
        assert sim.store.jobs == []
        drop(inbox, "fixme.json", job("fixme", parallel_number=2))
        await eventually(lambda: names_in(inbox / "done") == ["fixme.json"])
        drop(inbox, "fixme.json", job("fixme", parallel_number=2))  # the same again
        await eventually(lambda: len(names_in(inbox / "done")) == 2)
    assert [j.name for j in sim.store.jobs] == ["fixme"]  # the ledger knew it was created
    assert names_in(inbox / "failed") == ["fixme.error.json", "fixme.json"]


async def test_a_changed_manifest_of_a_created_job_is_filed_as_drifted(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator()
    inbox = tmp_path / "inbox"
    source = fast(inbox)
    async with running(settings_for(sim.url, tmp_path), source):
        drop(inbox, "d.json", job("d"))
        await eventually(lambda: names_in(inbox / "done") == ["d.json"])
        drop(inbox, "d.json", job("d", cu_number=4))
        await eventually(lambda: "d.error.json" in names_in(inbox / "failed"))
    error = json.loads((inbox / "failed" / "d.error.json").read_text())
    assert error["jobs"][0]["outcome"] == "drifted" and "cu_number" in error["jobs"][0]["error"]
    assert len(sim.store.jobs) == 1


async def test_unreadable_entries_are_filed_under_failed_with_their_reason(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator()
    inbox = tmp_path / "inbox"
    problems = odd_entries(inbox)
    drop(inbox, "good.json", job("good"))
    source = fast(inbox)
    async with running(settings_for(sim.url, tmp_path), source):
        await eventually(lambda: len(os.listdir(inbox / "failed")) == 2 * len(problems))
    assert [j.name for j in sim.store.jobs] == ["good"]
    assert names_in(inbox / "done") == ["good.json"]
    for name, problem in problems.items():
        assert os.path.lexists(inbox / "failed" / name)  # the entry itself, moved
        error = json.loads((inbox / "failed" / name.replace(".json", ".error.json")).read_text())
        assert error["reason"] == f"1 of 1 jobs not created: {inbox / name}: {problem}"
    assert sorted(os.listdir(inbox)) == [
        "a-folder",
        "done",
        "failed",
        "folder-link.json",
        "processing",
    ]


# --- healing --------------------------------------------------------------------------------


async def test_removed_folders_are_made_again_and_every_file_gets_done(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator()
    inbox = tmp_path / "inbox"
    source = fast(inbox)
    with structlog.testing.capture_logs() as logs:
        async with running(settings_for(sim.url, tmp_path), source):
            drop(inbox, "a.json", job("a"))
            await eventually(lambda: names_in(inbox / "done") == ["a.json"])
            os.rmdir(inbox / "processing")
            os.rmdir(inbox / "failed")
            os.rename(inbox / "done", tmp_path / "done-before")
            drop(inbox, "b.json", job("b"))
            drop(inbox, "c.json", job("c"))
            await eventually(lambda: names_in(inbox / "done") == ["b.json", "c.json"])
    assert names_in(tmp_path / "done-before") == ["a.json"]
    assert sorted(j.name for j in sim.store.jobs) == ["a", "b", "c"]
    assert sim.store.duplicates() == {}
    made = {e["folder"] for e in logs if e["event"] == "folder.recreated"}
    assert made == {str(inbox / folder) for folder in ("processing", "done", "failed")}


async def test_processing_removed_with_a_file_in_it_loses_only_that_file(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator(latency=0.5)
    inbox = tmp_path / "inbox"
    source = fast(inbox)
    with structlog.testing.capture_logs() as logs:
        async with running(settings_for(sim.url, tmp_path), source):
            drop(inbox, "gone.json", job("gone"))
            await eventually(lambda: names_in(inbox / "processing") == ["gone.json"])
            shutil.rmtree(inbox / "processing")  # an operator's rm -rf, the file with it
            await eventually(lambda: any(e["event"] == "file.vanished" for e in logs))
            drop(inbox, "next.json", job("next"))
            await eventually(lambda: names_in(inbox / "done") == ["next.json"])
    assert sorted(j.name for j in sim.store.jobs) == ["gone", "next"]  # created once each


async def test_a_failed_move_is_retried_until_it_works_and_shown_meanwhile(
    simulator: SimulatorFactory, tmp_path: Path
) -> None:
    sim = await simulator()
    inbox = tmp_path / "inbox"
    source = DropFolderSource(
        inbox, settle_time=0.0, rescan_interval=0.05, retry_delay=0.0, move_retry_max=0.2
    )
    source.prepare()
    metrics = Metrics()
    metrics.track_stuck(source.stuck_files)
    server = await start_metrics_server(metrics, "127.0.0.1", 0)
    try:
        with structlog.testing.capture_logs() as logs:
            async with (
                running(settings_for(sim.url, tmp_path), source),
                aiohttp.ClientSession() as http,
            ):
                with unwritable(inbox / "done"):
                    drop(inbox, "x.json", job("x"))
                    drop(inbox, "y.json", job("y"))
                    await eventually(lambda: len(source.stuck_files()) == 2)
                    drop(inbox, "x.json", job("x"))  # a later file of that name waits
                    await eventually(lambda: sum(e["event"] == "file.waiting" for e in logs) == 1)
                    await asyncio.sleep(0.5)  # a few retries fail meanwhile
                    async with http.get(f"{server.url}/healthz") as response:
                        health = (response.status, await response.text())
                    scraped = metrics.render().decode()
                    assert names_in(inbox) == ["x.json"]
                await eventually(lambda: len(names_in(inbox / "done")) == 3)
                async with http.get(f"{server.url}/healthz") as response:
                    assert (response.status, await response.text()) == (200, "ok")
    finally:
        await server.close()
    assert health[0] == 200 and health[1].startswith("degraded: 2 file(s) stuck in processing/")
    assert "x.json: " in health[1] and "y.json: " in health[1]
    assert "batchsub_files_stuck 2.0" in scraped
    assert sorted(j.name for j in sim.store.jobs) == ["x", "y"]  # the second x: already created
    events = [e["event"] for e in logs]
    assert events.count("file.cannot_move") == 2  # once per file, however many retries
    assert events.count("file.moved") == 2
    assert names_in(inbox / "processing") == [] and source.stuck_files() == []
