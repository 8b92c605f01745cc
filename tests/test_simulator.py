"""The DLI simulator over real HTTP on 127.0.0.1: bodies, error shapes, auth, faults, paging."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import orjson
import pytest
from structlog.testing import capture_logs
from yarl import URL

from batchsub.signer import sign_headers
from batchsub.simulator import (
    Fault,
    RunningSimulator,
    SimulatorConfig,
    serve_forever,
    start_simulator,
)
from batchsub.simulator.faults import FaultPicker, RateWindow

PROJECT = "0123456789abcdef"
TOKEN = "token-s3cret"
AK, SK = "AKSIMTEST", "sk-s3cret-value"
CREATE = f"/v1.0/{PROJECT}/streaming/flink-jobs"
LIST = f"/v1.0/{PROJECT}/streaming/jobs"

MakeSim = Callable[..., Awaitable[RunningSimulator]]


def job_body(name: str = "job-a", **extra: Any) -> dict[str, Any]:
    """A valid create body."""
    return {"name": name, "queue_name": "q1", "entrypoint": "app.jar", "cu_number": 2, **extra}


@pytest.fixture
async def make_sim() -> AsyncIterator[MakeSim]:
    """Start simulators (auth on, project fixed unless overridden); close them all after."""
    sims: list[RunningSimulator] = []

    async def make(**overrides: Any) -> RunningSimulator:
        settings: dict[str, Any] = {
            "project_id": PROJECT,
            "tokens": frozenset({TOKEN}),
            "aksk": {AK: SK},
        }
        settings.update(overrides)
        sim = await start_simulator(SimulatorConfig(**settings))
        sims.append(sim)
        return sim

    yield make
    for sim in sims:
        await sim.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session with a short timeout."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


TOKEN_HEADERS = {"X-Auth-Token": TOKEN, "Content-Type": "application/json"}


def signed(
    sim: RunningSimulator,
    method: str,
    path: str,
    body: bytes = b"",
    query: Mapping[str, str] | None = None,
    *,
    ak: str = AK,
    sk: str = SK,
    now: datetime | None = None,
) -> dict[str, str]:
    """AK/SK headers for one request, signed as the client and the official SDK do."""
    url = URL(sim.url)
    headers = {"Host": f"{url.host}:{url.port}", "X-Project-Id": PROJECT}
    if body:
        headers["Content-Type"] = "application/json"
    return sign_headers(
        ak=ak,
        sk=sk,
        method=method,
        path=path,
        query=list((query or {}).items()),
        headers=headers,
        body=body,
        now=now or datetime.now(UTC),
    )


async def post_json(
    http: aiohttp.ClientSession,
    sim: RunningSimulator,
    body: object,
    headers: Mapping[str, str] = TOKEN_HEADERS,
    path: str = CREATE,
) -> tuple[int, dict[str, Any]]:
    """POST a body, return (status, parsed JSON)."""
    async with http.post(sim.url + path, data=orjson.dumps(body), headers=headers) as resp:
        assert resp.content_type == "application/json"
        return resp.status, orjson.loads(await resp.read())


async def get_json(
    http: aiohttp.ClientSession,
    sim: RunningSimulator,
    path: str,
    query: Mapping[str, str] | None = None,
    headers: Mapping[str, str] = TOKEN_HEADERS,
) -> tuple[int, dict[str, Any]]:
    """GET a path, return (status, parsed JSON)."""
    async with http.get(sim.url + path, params=query or {}, headers=headers) as resp:
        assert resp.content_type == "application/json"
        return resp.status, orjson.loads(await resp.read())


async def test_create_list_detail_with_token(
    make_sim: MakeSim, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    status, answer = await post_json(http, sim, job_body("job-a", desc="first"))
    assert status == 200
    assert answer == {
        "is_success": True,
        "message": "A Flink job is created successfully.",
        "job": {"job_id": 1, "status_name": "job_init", "status_desc": ""},
    }
    status, listing = await get_json(http, sim, LIST)
    assert status == 200
    assert listing["is_success"] == "true"
    assert listing["job_list"]["total_count"] == 1
    (job,) = listing["job_list"]["jobs"]
    assert job["job_id"] == 1
    assert job["name"] == "job-a"
    assert job["desc"] == "first"
    assert job["job_type"] == "flink_jar_job"
    assert job["status"] == "job_init"
    assert job["queue_name"] == "q1"
    assert abs(job["create_time"] - time.time() * 1000) < 60_000
    status, detail = await get_json(http, sim, f"{LIST}/1")
    assert status == 200
    assert detail["job_detail"]["job_config"]["entrypoint"] == "app.jar"
    assert detail["job_detail"]["job_config"]["cu_number"] == 2
    (stored,) = sim.store.jobs
    assert stored.body == job_body("job-a", desc="first")
    assert sim.store.create_requests == 1


async def test_create_and_list_with_aksk(make_sim: MakeSim, http: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    raw = orjson.dumps(job_body("signed-job"))
    status, answer = await post_json(
        http, sim, job_body("signed-job"), signed(sim, "POST", CREATE, raw)
    )
    assert (status, answer["job"]["job_id"]) == (200, 1)
    query = {"name": "signed-job", "limit": "5"}
    headers = signed(sim, "GET", LIST, query=query)
    status, listing = await get_json(http, sim, LIST, query, headers)
    assert status == 200
    assert [j["name"] for j in listing["job_list"]["jobs"]] == ["signed-job"]


def _auth_cases(sim: RunningSimulator, raw: bytes) -> dict[str, tuple[dict[str, str], str]]:
    stale = datetime.now(UTC) - timedelta(minutes=20)
    bad_date = signed(sim, "POST", CREATE, raw)
    bad_date["X-Sdk-Date"] = "yesterday"
    no_date = signed(sim, "POST", CREATE, raw)
    del no_date["X-Sdk-Date"]
    return {
        "none": ({"Content-Type": "application/json"}, "missing X-Auth-Token or Authorization"),
        "bad token": ({"X-Auth-Token": "nope"}, "X-Auth-Token is invalid"),
        "bad signature": (signed(sim, "POST", CREATE, raw, sk="wrong-sk"), "signature"),
        "unknown ak": (signed(sim, "POST", CREATE, raw, ak="AKUNKNOWN"), "unknown access key"),
        "stale date": (signed(sim, "POST", CREATE, raw, now=stale), "15 minutes"),
        "bad date": (bad_date, "malformed X-Sdk-Date"),
        "no date": (no_date, "missing X-Sdk-Date"),
        "garbage": ({"Authorization": "Basic abc"}, "malformed Authorization"),
    }


@pytest.mark.parametrize(
    "case",
    [
        "none",
        "bad token",
        "bad signature",
        "unknown ak",
        "stale date",
        "bad date",
        "no date",
        "garbage",
    ],
)
async def test_auth_failures_answer_401(
    make_sim: MakeSim, http: aiohttp.ClientSession, case: str
) -> None:
    sim = await make_sim()
    raw = orjson.dumps(job_body())
    headers, reason = _auth_cases(sim, raw)[case]
    status, answer = await post_json(http, sim, job_body(), headers)
    assert status == 401
    assert answer["error_code"] == "APIG.0301"
    assert answer["error_msg"].startswith("Incorrect IAM authentication information: ")
    assert reason in answer["error_msg"]
    assert SK not in answer["error_msg"] and TOKEN not in answer["error_msg"]
    assert sim.store.jobs == [] and sim.store.create_requests == 0


async def test_tampered_body_fails_signature(
    make_sim: MakeSim, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    headers = signed(sim, "POST", CREATE, orjson.dumps(job_body("a")))
    status, answer = await post_json(http, sim, job_body("b"), headers)
    assert (status, answer["error_code"]) == (401, "APIG.0301")


async def test_auth_disabled_without_credentials(
    make_sim: MakeSim, http: aiohttp.ClientSession
) -> None:
    with capture_logs() as logs:
        sim = await make_sim(tokens=frozenset(), aksk={}, project_id=None)
    assert "off" in logs[0]["auth"] and logs[0]["url"] == sim.url
    other = "/v1.0/another-project/streaming/flink-jobs"
    status, _ = await post_json(http, sim, job_body(), {}, path=other)
    assert status == 200
    assert sim.store.jobs[0].project_id == "another-project"


async def test_wrong_project_is_403(make_sim: MakeSim, http: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    status, answer = await post_json(http, sim, job_body(), path="/v1.0/other/streaming/flink-jobs")
    assert (status, answer["error_code"]) == (403, "APIG.0302")
    assert sim.store.jobs == []


async def test_validation_error_names_the_field(
    make_sim: MakeSim, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    status, answer = await post_json(http, sim, job_body(parallel_numbr=2))
    assert (status, answer["error_code"]) == (400, "DLI.0001")
    assert "parallel_numbr" in answer["error_msg"]
    status, answer = await post_json(http, sim, job_body(cu_number="2"))
    assert (status, answer["error_code"]) == (400, "DLI.0001")
    assert "cu_number" in answer["error_msg"]
    async with http.post(sim.url + CREATE, data=b"{not json", headers=TOKEN_HEADERS) as resp:
        assert resp.status == 400
        assert (await resp.json())["error_code"] == "DLI.0001"
    assert sim.store.jobs == []
    assert sim.store.create_requests == 3
    assert sim.store.requests_by_name["job-a"] == 2


async def test_fail_5xx_does_not_create(make_sim: MakeSim, http: aiohttp.ClientSession) -> None:
    sim = await make_sim(fail_5xx=1.0, seed=7)
    statuses = set()
    for _ in range(12):
        status, answer = await post_json(http, sim, job_body())
        statuses.add(status)
        assert answer["error_code"] in ("DLI.0999", "APIG.0202")
    assert statuses <= {500, 502, 503} and len(statuses) > 1
    assert sim.store.jobs == []
    assert sim.store.faults[Fault.FAIL_5XX] == 12


async def test_dli0999_before_and_after_create(
    make_sim: MakeSim, http: aiohttp.ClientSession
) -> None:
    before = await make_sim(dli0999=1.0)
    status, answer = await post_json(http, before, job_body())
    assert (status, answer["error_code"]) == (400, "DLI.0999")
    assert before.store.jobs == []
    after = await make_sim(dli0999_after_create=1.0)
    status, answer = await post_json(http, after, job_body())
    assert (status, answer["error_code"]) == (400, "DLI.0999")
    assert [j.name for j in after.store.jobs] == ["job-a"]


async def test_504_after_create(make_sim: MakeSim, http: aiohttp.ClientSession) -> None:
    sim = await make_sim(error_504_after_create=1.0)
    status, answer = await post_json(http, sim, job_body())
    assert (status, answer["error_code"]) == (504, "APIG.0203")
    assert len(sim.store.created_by_name("job-a")) == 1


async def test_drop_after_create_disconnects(
    make_sim: MakeSim, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(drop_after_create=1.0)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post_json(http, sim, job_body())
    assert len(sim.store.created_by_name("job-a")) == 1
    # The server keeps serving other requests after dropping one.
    status, _ = await get_json(http, sim, LIST)
    assert status == 200


async def test_slow_after_create_times_out_and_closes_fast(
    make_sim: MakeSim, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(slow_after_create=1.0, slow_seconds=20.0)
    with pytest.raises(asyncio.TimeoutError):
        async with http.post(
            sim.url + CREATE,
            data=orjson.dumps(job_body()),
            headers=TOKEN_HEADERS,
            timeout=aiohttp.ClientTimeout(total=0.3),
        ) as resp:
            await resp.read()
    assert len(sim.store.created_by_name("job-a")) == 1
    started = time.monotonic()
    await sim.close()
    assert time.monotonic() - started < 3.0


async def test_slow_answer_arrives_after_slow_seconds(
    make_sim: MakeSim, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(slow_after_create=1.0, slow_seconds=0.3)
    started = time.monotonic()
    status, answer = await post_json(http, sim, job_body())
    assert time.monotonic() - started >= 0.3
    assert (status, answer["job"]["job_id"]) == (200, 1)


async def test_duplicate_names_reject(make_sim: MakeSim, http: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    assert (await post_json(http, sim, job_body("dup")))[0] == 200
    status, answer = await post_json(http, sim, job_body("dup"))
    assert (status, answer["error_code"]) == (400, "DLI.0006")
    assert answer["error_msg"] == "Flink job name dup already exists (job_id 1)"
    assert sim.store.duplicates() == {}
    assert sim.store.requests_by_name["dup"] == 2


async def test_duplicate_names_accept(make_sim: MakeSim, http: aiohttp.ClientSession) -> None:
    sim = await make_sim(duplicate_names="accept")
    await post_json(http, sim, job_body("dup"))
    status, answer = await post_json(http, sim, job_body("dup"))
    assert (status, answer["job"]["job_id"]) == (200, 2)
    assert sim.store.duplicates() == {"dup": 2}
    assert [j.job_id for j in sim.store.created_by_name("dup")] == [1, 2]


async def test_quota_and_unknown_queue(make_sim: MakeSim, http: aiohttp.ClientSession) -> None:
    sim = await make_sim(max_jobs=1, known_queues=frozenset({"q1"}))
    status, answer = await post_json(http, sim, job_body("x", queue_name="q9"))
    assert (status, answer["error_code"]) == (400, "DLI.0002")
    assert "q9" in answer["error_msg"]
    assert (await post_json(http, sim, job_body("a")))[0] == 200
    status, answer = await post_json(http, sim, job_body("b"))
    assert (status, answer["error_code"]) == (400, "DLI.1028")
    assert [j.name for j in sim.store.jobs] == ["a"]


async def test_rate_limit_429_with_fake_clock(
    make_sim: MakeSim, http: aiohttp.ClientSession
) -> None:
    now = [100.0]
    sim = await make_sim(rate_limit=3, clock=lambda: now[0])
    statuses = []
    for _ in range(5):
        status, answer = await get_json(http, sim, LIST)
        statuses.append(status)
    assert statuses == [200, 200, 200, 429, 429]
    assert answer["error_code"] == "APIG.0308"
    assert answer["error_msg"] == (
        "The throttling threshold has been reached: policy user over ratelimit,"
        "limit:3,time:1 second"
    )
    assert sim.store.throttled == 2
    now[0] += 0.5
    assert (await get_json(http, sim, LIST))[0] == 429
    now[0] += 0.5  # the first three leave the window
    assert (await get_json(http, sim, LIST))[0] == 200
    assert [t for t, _ in sim.store.arrivals] == [100.0] * 5 + [100.5, 101.0]
    assert {p for _, p in sim.store.arrivals} == {LIST}


async def test_list_paging_order_and_exact_name(
    make_sim: MakeSim, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim()
    for name in ("alpha", "alpha-2", "beta", "gamma", "delta"):
        await post_json(http, sim, job_body(name))
    status, page = await get_json(http, sim, LIST, {"limit": "2", "offset": "1", "order": "asc"})
    assert status == 200
    assert page["job_list"]["total_count"] == 5
    assert [j["job_id"] for j in page["job_list"]["jobs"]] == [2, 3]
    _, newest = await get_json(http, sim, LIST, {"limit": "2"})
    assert [j["job_id"] for j in newest["job_list"]["jobs"]] == [5, 4]
    _, named = await get_json(http, sim, LIST, {"name": "alpha"})
    assert [j["name"] for j in named["job_list"]["jobs"]] == ["alpha"]
    assert named["job_list"]["total_count"] == 1
    _, none = await get_json(http, sim, LIST, {"name": "alp"})
    assert none["job_list"] == {"total_count": 0, "jobs": []}
    _, other = await get_json(http, sim, LIST, {"job_type": "flink_sql_job"})
    assert other["job_list"]["total_count"] == 0
    _, queued = await get_json(http, sim, LIST, {"queue_name": "q1", "status": "job_init"})
    assert queued["job_list"]["total_count"] == 5
    _, brief = await get_json(http, sim, LIST, {"limit": "1"})
    assert "job_config" not in brief["job_list"]["jobs"][0]
    _, full = await get_json(http, sim, LIST, {"limit": "1", "show_detail": "true"})
    assert full["job_list"]["jobs"][0]["job_config"]["entrypoint"] == "app.jar"


@pytest.mark.parametrize(
    "query",
    [{"limit": "101"}, {"limit": "x"}, {"offset": "-1"}, {"order": "up"}, {"show_detail": "y"}],
)
async def test_list_rejects_bad_query(
    make_sim: MakeSim, http: aiohttp.ClientSession, query: dict[str, str]
) -> None:
    sim = await make_sim()
    status, answer = await get_json(http, sim, LIST, query)
    assert (status, answer["error_code"]) == (400, "DLI.0001")
    assert next(iter(query)) in answer["error_msg"]


async def test_detail_errors(make_sim: MakeSim, http: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    status, answer = await get_json(http, sim, f"{LIST}/42")
    assert (status, answer["error_code"]) == (400, "DLI.16001")
    status, answer = await get_json(http, sim, f"{LIST}/abc")
    assert (status, answer["error_code"]) == (400, "DLI.0001")


async def test_delete_removes_a_job_for_good(
    make_sim: MakeSim, http: aiohttp.ClientSession
) -> None:
    sim = await make_sim(duplicate_names="accept")
    for name in ("alpha", "beta"):
        await post_json(http, sim, job_body(name))

    async def delete(path: str) -> tuple[int, dict[str, Any]]:
        async with http.delete(sim.url + path, headers=TOKEN_HEADERS) as resp:
            return resp.status, orjson.loads(await resp.read())

    assert (await delete(f"{LIST}/1"))[0] == 200
    for path in (f"{LIST}/1", f"{LIST}/7", f"{LIST}/x"):  # deleted, never made, not an id
        status, answer = await delete(path)
        assert (status, answer["error_code"]) == (
            (400, "DLI.0001") if path.endswith("x") else (400, "DLI.16001")
        )
    status, answer = await get_json(http, sim, f"{LIST}/1")
    assert (status, answer["error_code"]) == (400, "DLI.16001")
    _, page = await get_json(http, sim, LIST)
    assert [j["name"] for j in page["job_list"]["jobs"]] == ["beta"]
    assert page["job_list"]["total_count"] == 1
    _, again = await post_json(http, sim, job_body("alpha"))
    assert again["job"]["job_id"] == 3  # ids are not reused
    assert sim.store.duplicates() == {}


async def test_unknown_route_and_method(make_sim: MakeSim, http: aiohttp.ClientSession) -> None:
    sim = await make_sim()
    status, answer = await get_json(http, sim, "/v2/nothing")
    assert (status, answer["error_code"]) == (404, "APIG.0101")
    status, answer = await get_json(http, sim, CREATE)
    assert status == 405
    assert "error_msg" in answer


async def test_latency_delays_answers(make_sim: MakeSim, http: aiohttp.ClientSession) -> None:
    sim = await make_sim(latency=0.2)
    started = time.monotonic()
    status, _ = await get_json(http, sim, LIST)
    assert status == 200
    assert time.monotonic() - started >= 0.2


async def test_serve_forever_logs_url_and_stops_on_cancel(http: aiohttp.ClientSession) -> None:
    config = SimulatorConfig(project_id=PROJECT, tokens=frozenset({TOKEN}))
    with capture_logs() as logs:
        task = asyncio.create_task(serve_forever(config, "127.0.0.1", 0))
        async with asyncio.timeout(5):
            while not logs:
                await asyncio.sleep(0.01)
        url = logs[0]["url"]
        async with http.get(url + LIST, headers=TOKEN_HEADERS) as resp:
            assert resp.status == 200
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert logs[-1]["event"] == "simulator.stopped"
    assert TOKEN not in repr(logs) and TOKEN not in repr(config)
    with pytest.raises(aiohttp.ClientConnectionError):
        async with http.get(url + LIST, headers=TOKEN_HEADERS):
            pass


def test_fault_picker_is_seeded_and_proportional() -> None:
    config = SimulatorConfig(fail_5xx=0.25, drop_after_create=0.25, seed=3)
    first = [FaultPicker(config).pick() for _ in range(1)]
    picker_a, picker_b = FaultPicker(config), FaultPicker(config)
    draws_a = [picker_a.pick() for _ in range(400)]
    assert draws_a == [picker_b.pick() for _ in range(400)]
    assert first[0] == draws_a[0]
    assert 60 < draws_a.count(Fault.FAIL_5XX) < 140
    assert 60 < draws_a.count(Fault.DROP_AFTER_CREATE) < 140
    assert 120 < draws_a.count(None) < 280


def test_rate_window_slides() -> None:
    now = [0.0]
    window = RateWindow(2, lambda: now[0])
    assert [window.admit() for _ in range(3)] == [True, True, False]
    now[0] = 0.999
    assert window.admit() is False
    now[0] = 1.0
    assert window.admit() is True
