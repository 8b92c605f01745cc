"""The apply decision per job, the changes behind it, and a PUT never resent unseen."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from batchsub.answers import Kind
from batchsub.auth import TokenAuth
from batchsub.client import DliClient
from batchsub.jobs import UpdateRecord, UpdateState
from batchsub.lifecycle.apply_plan import ApplyAction, changes_between, decide_apply
from batchsub.lifecycle.update_fields import IN_PLACE_FIELDS, needs_restart
from tests.apply_support import Created, spec_of
from tests.support import PROJECT, TOKEN

BASE = {"name": "a", "queue_name": "q1", "cu_number": 2, "smn_topic": "a"}
JOB = Created("a", 7, BASE)


def decide(manifest: dict[str, Any], status: str | None = "job_running", **kw: Any) -> Any:
    return decide_apply(spec_of(manifest), JOB.record(), kw.pop("update", None), status, **kw)


def test_the_in_place_table_is_the_providers_six() -> None:
    assert set(IN_PLACE_FIELDS) == {
        "smn_topic", "restart_when_exception", "resume_checkpoint", "resume_max_num",
        "obs_bucket", "checkpoint_path",
    }  # fmt: skip
    assert not needs_restart(["smn_topic", "obs_bucket"])
    assert needs_restart(["smn_topic", "cu_number"])


def test_unchanged_and_changed() -> None:
    assert decide(dict(BASE)).action is ApplyAction.UNCHANGED
    restart = decide({**BASE, "cu_number": 4})
    assert restart.action is ApplyAction.RESTART
    assert [c.text() for c in restart.changes] == ["cu_number: 2 -> 4"]
    assert restart.how(True) == "restart with savepoint"
    assert restart.put_body == {"queue_name": "q1", "cu_number": 4, "smn_topic": "a"}
    in_place = decide({**BASE, "smn_topic": "b"})
    assert in_place.action is ApplyAction.IN_PLACE
    assert in_place.put_body == {"smn_topic": "b"}  # only the changed in-place field
    assert [c.text() for c in in_place.changes] == ["smn_topic: a -> b"]
    assert in_place.how(True) == "in place"


def test_the_status_decides_a_restart() -> None:
    change = {**BASE, "cu_number": 4}
    assert decide(change, "job_cancel_success").action is ApplyAction.UPDATE
    assert decide(change, "job_init").action is ApplyAction.UPDATE
    assert decide(change, "job_running_exception").action is ApplyAction.UPDATE
    assert decide(change, "job_savepointing").action is ApplyAction.IN_TRANSITION
    assert decide(change, "job_idle").action is ApplyAction.IN_TRANSITION
    assert decide(change, None).action is ApplyAction.UPDATE_UNKNOWN
    assert decide(change, None, gone=True).action is ApplyAction.MISSING


def test_a_default_written_out_is_no_change_and_a_removed_field_is_cleared() -> None:
    assert decide({**BASE, "manager_cu_number": 1}).action is ApplyAction.UNCHANGED
    removed = decide({"name": "a", "queue_name": "q1", "cu_number": 2})
    assert removed.action is ApplyAction.IN_PLACE
    assert removed.put_body == {"smn_topic": ""}
    assert [c.text() for c in removed.changes] == ["smn_topic: a -> (unset)"]
    tags = decide({**BASE, "tags": [{"key": "k", "value": "v"}]})
    assert tags.action is ApplyAction.NOT_APPLICABLE
    assert "tag API" in (tags.reason or "")
    rc = {**BASE, "resource_config": {"max_slot": 2}}
    with_rc = Created("a", 7, rc)
    gone_rc = decide_apply(spec_of(BASE), with_rc.record(), None, "job_running")
    assert gone_rc.action is ApplyAction.NOT_APPLICABLE


def test_an_unfinished_update_is_finished_first_and_a_done_one_is_the_base() -> None:
    new = {**BASE, "cu_number": 4}
    spec = spec_of(new)
    row = UpdateRecord("a", 7, UpdateState.STOPPED, spec.body, spec.body_hash, b"{}", True)
    assert decide(new, update=row).action is ApplyAction.RESUME
    done = UpdateRecord("a", 7, UpdateState.DONE, spec.body, spec.body_hash, b"{}", True)
    assert decide(new, update=done).action is ApplyAction.UNCHANGED
    back = decide(dict(BASE), update=done)
    assert [c.text() for c in back.changes] == ["cu_number: 4 -> 2"]
    other_job = UpdateRecord("a", 8, UpdateState.DONE, spec.body, spec.body_hash, b"{}", True)
    assert decide(new, update=other_job).action is ApplyAction.RESTART


def test_changes_between_reads_defaults() -> None:
    old = orjson.dumps({"name": "a"})
    new = orjson.dumps({"name": "a", "cu_number": 2, "parallel_number": 3})
    assert [c.text() for c in changes_between(old, new)] == ["parallel_number: 1 -> 3"]


# --- a PUT on a kept-alive connection that drops ---------------------------------------------


@asynccontextmanager
async def dropping_server() -> AsyncIterator[tuple[str, list[str]]]:
    """Answers a GET and keeps the connection; closes it, unanswered, on any PUT."""
    seen: list[str] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                line = head.split(b"\r\n", 1)[0].decode()
                seen.append(line.split(" ", 1)[0])
                length = 0
                for header in head.split(b"\r\n"):
                    if header.lower().startswith(b"content-length:"):
                        length = int(header.split(b":")[1])
                await reader.readexactly(length)
                if line.startswith("PUT"):
                    writer.close()
                    return
                body = b'{"is_success":true}'
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        server.close()
        await server.wait_closed()


async def test_aiohttp_resends_a_put_on_a_dropped_keep_alive_connection() -> None:
    # The trap itself: without the guard, the server sees the PUT twice.
    async with dropping_server() as (url, seen), aiohttp.ClientSession() as http:
        async with http.get(url + "/x") as resp:
            await resp.read()
        try:
            async with http.put(url + "/x", data=b"{}") as resp:
                await resp.read()
        except aiohttp.ClientError:
            pass
        assert seen == ["GET", "PUT", "PUT"]


async def test_update_job_is_sent_once_and_its_answer_is_in_doubt() -> None:
    async with dropping_server() as (url, seen), aiohttp.ClientSession() as http:
        client = DliClient(http, url, PROJECT, TokenAuth(TOKEN), timeout=2.0)
        async with http.get(url + "/x") as resp:  # a kept-alive connection in the pool
            await resp.read()
        answer = await client.update_job(7, {"cu_number": 4})
        assert answer.kind is Kind.IN_DOUBT, answer
        assert seen == ["GET", "PUT"]
