"""TokenAuth and AkSkAuth, with AK/SK requests sent over real HTTP and verified server-side."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest
from aiohttp import web
from yarl import URL

from batchsub import signer
from batchsub.answers import AnswerKind
from batchsub.auth import JSON_CONTENT_TYPE, AkSkAuth, TokenAuth
from batchsub.client import DliClient
from batchsub.errors import FatalApiError
from batchsub.protocols import Auth
from tests.support import SimulatorFactory

AK = "AKIDSECRETPART0123"
SK = "the-secret-key-do-not-leak"
PROJECT = "0123456789abcdef"
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)


def fixed_clock() -> datetime:
    return NOW


async def echo(request: web.Request) -> web.Response:
    """Verify the signature as a server would, and echo what arrived."""
    body = await request.read()
    try:
        _, names, signature = signer.parse_authorization(request.headers["Authorization"])
    except (KeyError, ValueError) as exc:
        return web.json_response({"valid": False, "error": str(exc)})
    valid = signer.verify(
        sk=SK,
        method=request.method,
        path=request.rel_url.raw_path,
        query=list(request.query.items()),
        headers=request.headers,
        body=body,
        signed_headers=names,
        signature=signature,
    )
    return web.json_response(
        {"valid": valid, "host": request.headers.get("Host"), "headers": dict(request.headers)}
    )


@pytest.fixture
async def server_url() -> AsyncIterator[URL]:
    """A tiny aiohttp server on 127.0.0.1 and a free port, verifying every request."""
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield URL.build(scheme="http", host=host, port=port)
    finally:
        await runner.cleanup()


Send = Callable[[str, URL, dict[str, str], bytes], Awaitable[dict[str, object]]]


@pytest.fixture
async def send() -> AsyncIterator[Send]:
    """Send one request with exactly these headers and body; return the server's JSON."""
    async with aiohttp.ClientSession() as session:

        async def _send(
            method: str, url: URL, headers: dict[str, str], body: bytes
        ) -> dict[str, object]:
            async with session.request(method, url, headers=headers, data=body) as response:
                assert response.status == 200
                payload: dict[str, object] = await response.json()
                return payload

        yield _send


def aksk() -> AkSkAuth:
    return AkSkAuth(AK, SK, PROJECT, clock=fixed_clock)


async def test_aksk_post_verifies_server_side(server_url: URL, send: Send) -> None:
    url = (server_url / "v1.0" / PROJECT / "streaming" / "flink-jobs").with_query(
        [("b", "2"), ("a", "x~y é"), ("a", "1")]
    )
    body = b'{"name": "job-1", "queue_name": "q"}'
    auth: Auth = aksk()  # mypy checks AkSkAuth against the protocol
    headers = dict(auth.headers("POST", url, body))

    echoed = await send("POST", url, headers, body)

    assert echoed["valid"] is True
    assert echoed["host"] == f"127.0.0.1:{server_url.port}" == headers["Host"]
    received = echoed["headers"]
    assert isinstance(received, dict)
    assert received["Content-Type"] == JSON_CONTENT_TYPE
    assert received["X-Project-Id"] == PROJECT
    assert received["X-Sdk-Date"] == "20240506T070809Z"
    assert received["Authorization"] == headers["Authorization"]


async def test_aksk_get_without_body_verifies(server_url: URL, send: Send) -> None:
    url = server_url.with_path(f"/v1.0/{PROJECT}/streaming/jobs/odd%20name~").with_query(
        {"limit": "100", "job_type": "flink_jar_job"}
    )
    headers = aksk().headers("GET", url, b"")
    assert "Content-Type" not in headers

    echoed = await send("GET", url, headers, b"")

    assert echoed["valid"] is True


async def test_a_tampered_request_fails_server_side(server_url: URL, send: Send) -> None:
    url = server_url / "v1.0" / PROJECT / "streaming" / "flink-jobs"
    headers = aksk().headers("POST", url, b'{"name": "a"}')

    assert (await send("POST", url, headers, b'{"name": "b"}'))["valid"] is False
    assert (await send("POST", url / "x", headers, b'{"name": "a"}'))["valid"] is False
    wrong_sk = AkSkAuth(AK, SK + "!", PROJECT, clock=fixed_clock)
    headers = wrong_sk.headers("POST", url, b'{"name": "a"}')
    assert (await send("POST", url, headers, b'{"name": "a"}'))["valid"] is False


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://dli.eu-west-101.myhuaweicloud.eu/v1.0/p", "dli.eu-west-101.myhuaweicloud.eu"),
        ("https://dli.example.com:443/v1.0/p", "dli.example.com"),
        ("http://dli.example.com:80/", "dli.example.com"),
        ("https://dli.example.com:8443/v1.0/p", "dli.example.com:8443"),
        ("http://[::1]:8080/", "[::1]:8080"),
    ],
)
def test_aksk_host_header(url: str, host: str) -> None:
    assert aksk().headers("GET", URL(url), b"")["Host"] == host


def test_aksk_signs_with_the_clock() -> None:
    times = iter([NOW, datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)])
    auth = AkSkAuth(AK, SK, PROJECT, clock=lambda: next(times))
    url = URL("https://dli.example.com/v1.0/p")
    first = auth.headers("GET", url, b"")
    second = auth.headers("GET", url, b"")
    assert (first["X-Sdk-Date"], second["X-Sdk-Date"]) == ("20240506T070809Z", "20300102T030405Z")
    assert first["Authorization"] != second["Authorization"]


def test_aksk_needs_an_absolute_url() -> None:
    with pytest.raises(ValueError, match="absolute"):
        aksk().headers("GET", URL("/v1.0/p"), b"")


@pytest.mark.parametrize(
    ("ak", "sk", "project"), [("", SK, PROJECT), (AK, "", PROJECT), (AK, SK, "")]
)
def test_aksk_rejects_empty_credentials(ak: str, sk: str, project: str) -> None:
    with pytest.raises(ValueError) as info:
        AkSkAuth(ak, sk, project)
    assert SK not in str(info.value)


def test_aksk_never_shows_the_secret() -> None:
    auth = aksk()
    for text in (repr(auth), auth.describe(), str(auth)):
        assert SK not in text
        assert AK[:5] not in text
    assert auth.describe() == "AK/SK HUAWEICLOUD_SDK_AK=AKID…"


def test_token_auth() -> None:
    token = "MIIZsecret-token-value"
    auth: Auth = TokenAuth(token)
    assert auth.headers("POST", URL("https://dli.example.com/v1.0/p"), b"{}") == {
        "X-Auth-Token": token
    }
    assert auth.describe() == "token from BATCHSUB_AUTH_TOKEN"
    assert token not in repr(auth) and token not in str(auth)
    with pytest.raises(ValueError):
        TokenAuth("")


def clock_off(minutes: int) -> Callable[[], datetime]:
    return lambda: datetime.now(UTC) + timedelta(minutes=minutes)


@pytest.mark.parametrize(("skew_min", "hinted"), [(17, True), (-17, True), (6, True), (4, False)])
async def test_a_401_says_when_the_clocks_differ(
    simulator: SimulatorFactory, skew_min: int, hinted: bool
) -> None:
    sim = await simulator(tokens=frozenset(), aksk={AK: SK}, project_id=None)
    # Past 15 min the signature is refused for its date; within them, for a wrong SK.
    auth = AkSkAuth(
        AK, SK if abs(skew_min) > 15 else "a-wrong-sk", PROJECT, clock=clock_off(skew_min)
    )
    async with aiohttp.ClientSession() as session:
        client = DliClient(session, sim.url, PROJECT, auth)
        with pytest.raises(FatalApiError) as listing:
            await client.list_page(name=None, offset=0)
        answer = await client.create(b'{"name": "x"}')  # not sent: the refusal is repeated
    hint = (
        f"the server's clock differs from this machine's by {abs(skew_min)} min; "
        "AK/SK signatures are valid for 15 min: check NTP"
    )
    assert (hint in str(listing.value)) is hinted
    assert answer.kind is AnswerKind.FATAL and answer.error is not None
    assert (hint in str(answer.error)) is hinted
    assert len(sim.store.arrivals) == 1


async def test_a_refused_create_names_the_clock_too(simulator: SimulatorFactory) -> None:
    sim = await simulator(tokens=frozenset(), aksk={AK: SK}, project_id=None)
    async with aiohttp.ClientSession() as session:
        client = DliClient(
            session, sim.url, PROJECT, AkSkAuth(AK, SK, PROJECT, clock=clock_off(-20))
        )
        answer = await client.create(b'{"name": "x"}')
    assert answer.kind is AnswerKind.FATAL and answer.error is not None
    assert answer.error.http_status == 401
    assert "differs from this machine's by 20 min" in answer.error.message
    assert str(answer.error).count("HTTP 401") == 1


def test_a_token_has_no_clock_to_blame() -> None:
    assert TokenAuth("t").refusal_hint(datetime(2000, 1, 1, tzinfo=UTC)) is None
