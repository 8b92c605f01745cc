"""Answer classification, and the client over real HTTP on loopback."""

from __future__ import annotations

import socket
import time

import aiohttp
import orjson
import pytest
from aiohttp import web

from batchsub.answers import AnswerKind, JobPage, classify_create
from batchsub.auth import TokenAuth
from batchsub.client import DliClient
from batchsub.errors import CONNECT_FAILED, UNREADABLE, ApiError, FatalApiError, RetryableError
from tests.http_support import serving, unanswered_port
from tests.support import PROJECT, TOKEN, SimulatorFactory


def body(**payload: object) -> bytes:
    return orjson.dumps(payload)


@pytest.mark.parametrize(
    ("status", "raw", "kind"),
    [
        (200, body(is_success=True, job={"job_id": 7}), AnswerKind.CREATED),
        (200, body(is_success="true", job={"job_id": 7}), AnswerKind.CREATED),
        (
            200,
            body(is_success="false", error_code="DLI.13024", error_msg="x"),
            AnswerKind.PERMANENT,
        ),
        (200, body(is_success=False, message="nope"), AnswerKind.PERMANENT),
        (200, body(is_success=True), AnswerKind.IN_DOUBT),
        (200, b"<html>proxy</html>", AnswerKind.IN_DOUBT),
        (200, body(is_success=False, error_code="DLI.0999", error_msg="x"), AnswerKind.IN_DOUBT),
        (400, body(error_code="DLI.0001", error_msg="bad"), AnswerKind.PERMANENT),
        (400, body(error_code="DLI.0002", error_msg="no queue"), AnswerKind.PERMANENT),
        (400, body(error_code="DLI.1028", error_msg="quota"), AnswerKind.PERMANENT),
        (400, body(error_code="DLI.0999", error_msg="server"), AnswerKind.IN_DOUBT),
        (400, body(error_code="DLI.0006", error_msg="exists"), AnswerKind.DUPLICATE),
        (
            400,
            body(error_code="DLI.0001", error_msg="The job name already exists: job 12"),
            AnswerKind.DUPLICATE,
        ),
        (
            429,
            body(error_code="APIG.0308", error_msg="limit:40,time:1 second"),
            AnswerKind.RETRY_SAFE,
        ),
        (401, body(error_code="APIG.0301", error_msg="auth"), AnswerKind.FATAL),
        (403, body(error_code="APIG.0302", error_msg="denied"), AnswerKind.FATAL),
        (404, body(error_code="APIG.0101", error_msg="no route"), AnswerKind.FATAL),
        (500, body(error_code="DLI.0999", error_msg="x"), AnswerKind.IN_DOUBT),
        (502, body(errorCode="APIG.0202", errorMsg="backend"), AnswerKind.IN_DOUBT),
        (504, b"", AnswerKind.IN_DOUBT),
        (413, body(code="APIG.0201", message="too big"), AnswerKind.PERMANENT),
    ],
)
def test_classify_create(status: int, raw: bytes, kind: AnswerKind) -> None:
    answer = classify_create(status, raw, {})
    assert answer.kind is kind
    if kind is not AnswerKind.CREATED:
        assert answer.error is not None and answer.error.message


def test_error_codes_of_every_gateway_shape_are_read() -> None:
    for raw in (
        body(error_code="DLI.0002", error_msg="m"),
        body(errorCode="DLI.0002", errorMsg="m"),
        body(code="DLI.0002", message="m"),
    ):
        error = classify_create(400, raw, {}).error
        assert error is not None and (error.code, error.message, error.http_status) == (
            "DLI.0002",
            "m",
            400,
        )


def test_throttle_carries_retry_after() -> None:
    answer = classify_create(429, body(error_code="APIG.0308", error_msg="x"), {"Retry-After": "3"})
    assert answer.throttled and answer.retry_after == 3.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def test_connection_refused_is_known_not_sent() -> None:
    # Held bound, never listened on: refused, and no parallel test can take the port meanwhile.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{held.getsockname()[1]}"
        async with aiohttp.ClientSession() as session:
            client = DliClient(session, url, PROJECT, TokenAuth(TOKEN), timeout=2)
            answer = await client.create(b'{"name": "x"}')
    assert answer.kind is AnswerKind.RETRY_SAFE
    assert answer.error is not None and "cannot connect" in answer.error.message


async def test_lost_answers_are_in_doubt(simulator: SimulatorFactory) -> None:
    sim = await simulator(drop_after_create=1.0)
    slow = await simulator(slow_after_create=1.0, slow_seconds=5.0)
    async with aiohttp.ClientSession() as session:
        dropped = await DliClient(session, sim.url, PROJECT, TokenAuth(TOKEN)).create(
            b'{"name": "a"}'
        )
        timed_out = await DliClient(
            session, slow.url, PROJECT, TokenAuth(TOKEN), timeout=0.2
        ).create(b'{"name": "b"}')
    assert dropped.kind is AnswerKind.IN_DOUBT
    assert timed_out.kind is AnswerKind.IN_DOUBT
    assert [job.name for job in sim.store.jobs] == ["a"]
    assert [job.name for job in slow.store.jobs] == ["b"]


async def test_list_pages_and_errors(simulator: SimulatorFactory) -> None:
    sim = await simulator(rate_limit=1)
    for index in range(3):
        sim.store.add(f"job-{index}", {"name": f"job-{index}"}, index, PROJECT)
    async with aiohttp.ClientSession() as session:
        client = DliClient(session, sim.url, PROJECT, TokenAuth(TOKEN))
        page = await client.list_page(name=None, offset=0)
        assert page.total_count == 3
        assert sorted(job.name for job in page.jobs) == ["job-0", "job-1", "job-2"]
        with pytest.raises(RetryableError) as throttled:
            await client.list_page(name="job-1", offset=0)
        assert throttled.value.status == 429
        with pytest.raises(FatalApiError):
            await DliClient(session, sim.url, PROJECT, TokenAuth("wrong")).list_page(
                name=None, offset=0
            )
        with pytest.raises(ApiError) as wrong_project:
            await DliClient(session, sim.url + "/nowhere", PROJECT, TokenAuth(TOKEN)).list_page(
                name=None, offset=0
            )
        assert wrong_project.value.status == 404


async def nothing(request: web.Request) -> web.StreamResponse:
    return web.json_response({"is_success": True, "job": {"job_id": 666}})


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirect_is_never_followed_and_names_its_location(status: int) -> None:
    async with serving(nothing) as (elsewhere, received):
        target = f"{elsewhere}/v1.0/{PROJECT}/streaming/flink-jobs?token=x"

        async def redirect(request: web.Request) -> web.StreamResponse:
            return web.Response(status=status, headers={"Location": target})

        async with serving(redirect) as (url, _), aiohttp.ClientSession() as session:
            client = DliClient(session, url, PROJECT, TokenAuth(TOKEN))
            answer = await client.create(b'{"name": "x"}')
            with pytest.raises(FatalApiError) as listing:
                await client.list_page(name=None, offset=0)
    assert answer.kind is AnswerKind.FATAL
    assert answer.error is not None and target in answer.error.message
    assert f"HTTP {status}" in answer.error.message
    assert target in str(listing.value) and "not followed" in str(listing.value)
    assert received.requests == []  # the token never went to the other host


def answer(status: int, body: bytes | str, content_type: str) -> web.Response:
    data = body.encode() if isinstance(body, str) else body
    return web.Response(status=status, body=data, headers={"Content-Type": content_type})


JSON = "application/json"
_PAGE = orjson.dumps(
    {"is_success": "true", "job_list": {"total_count": 1, "jobs": [{"job_id": 1, "name": "a"}]}}
)


@pytest.mark.parametrize(
    ("status", "body", "content_type", "described"),
    [
        (200, "<html><body>Please log in</body></html>", "text/html; charset=utf-8",
         "HTTP 200 with an HTML body (text/html; charset=utf-8)"),
        (200, _PAGE[:40], JSON,
         "HTTP 200 with a body that is not JSON (application/json, 40 bytes)"),
        (200, "", JSON, "HTTP 200 with an empty body"),
        (200, "[]", JSON, "HTTP 200 with JSON that is not an object"),
        (200, '{"jobs": []}', JSON, "HTTP 200 with JSON that is not a job list"),
        (200, '{"job_list": {"total_count": 3}}', JSON, "no job_list.jobs list"),
        (200, '{"job_list": {"total_count": 1, "jobs": [{"id": 1, "name": "a"}]}}', JSON,
         "HTTP 200 with a job that has no integer job_id"),
        (200, '{"is_success": false, "error_code": "DLI.0005", "error_msg": "busy"}', JSON,
         "HTTP 200 with is_success False (DLI.0005 HTTP 200: busy)"),
        (400, '{"error_code": "DLI.0001", "error_msg": "bad query"}', JSON,
         "DLI.0001 HTTP 400: bad query"),
        (404, "<html>Not Found</html>", "text/html", "HTTP 404 with an HTML body (text/html)"),
        (404, '{"error_code": "APIG.0101", "error_msg": "no such API"}', JSON,
         "APIG.0101 HTTP 404"),
    ],
)  # fmt: skip
async def test_a_list_answer_that_cannot_be_read_is_transient_never_empty(
    status: int, body: str | bytes, content_type: str, described: str
) -> None:
    async def odd(request: web.Request) -> web.StreamResponse:
        return answer(status, body, content_type)

    async with serving(odd) as (url, _), aiohttp.ClientSession() as session:
        client = DliClient(session, url, PROJECT, TokenAuth(TOKEN))
        with pytest.raises(RetryableError) as caught:
            await client.list_page(name=None, offset=0)
    assert caught.value.code == UNREADABLE
    assert str(caught.value).startswith("the job list cannot be read: ")
    assert described in str(caught.value)
    assert client.reachability.problem == str(caught.value)


async def test_an_empty_project_and_a_full_page_are_read() -> None:
    pages = iter([b'{"is_success": "true", "job_list": {"total_count": 0}}', _PAGE])

    async def listing(request: web.Request) -> web.StreamResponse:
        return answer(200, next(pages), JSON)

    async with serving(listing) as (url, _), aiohttp.ClientSession() as session:
        client = DliClient(session, url, PROJECT, TokenAuth(TOKEN))
        assert await client.list_page(name=None, offset=0) == JobPage(0, [])
        page = await client.list_page(name=None, offset=0)
    assert page.total_count == 1 and [job.name for job in page.jobs] == ["a"]


async def test_an_address_that_never_answers_is_not_sent_to_within_the_connect_timeout() -> None:
    with unanswered_port() as port:
        async with aiohttp.ClientSession() as session:
            client = DliClient(
                session, f"http://127.0.0.1:{port}", PROJECT, TokenAuth(TOKEN),
                timeout=30, connect_timeout=0.5,
            )  # fmt: skip
            started = time.monotonic()
            answer = await client.create(b'{"name": "x"}')
            with pytest.raises(RetryableError) as listing:
                await client.list_page(name=None, offset=0)
            took = time.monotonic() - started
    assert answer.kind is AnswerKind.RETRY_SAFE  # the connection was never made: not sent
    assert answer.error is not None and "no answer to connect within 0.5 s" in answer.error.message
    assert listing.value.code == CONNECT_FAILED
    assert took < 5
    assert client.reachability.problem is not None
