"""The simulated DLI API as an aiohttp app: routes, the gateway checks, and the handlers.

Choices where the real service is undocumented or where the brief left the pick to us:

- Unknown routes answer 404 ``APIG.0101`` and a known path with another method 405, both JSON.
- Every request is recorded in ``store.arrivals``; one on a known route is then authenticated
  (401 ``APIG.0301``), rate limited (429 ``APIG.0308``), then its project checked: a project id
  other than ``config.project_id`` (or than the ``X-Project-Id`` header) answers 403
  ``APIG.0302``, as the gateway does for a credential used outside its project.
- ``name`` in the list query matches exactly; ``order`` defaults to ``desc``; one job table is
  shared by every project id the simulator accepts.
- ``DELETE .../streaming/jobs/{job_id}`` deletes a job (a job made and removed by hand); its id
  is never given again.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from batchsub.manifest import FlinkJarJob, describe_validation_error
from batchsub.simulator import iam
from batchsub.simulator.auth import authenticate
from batchsub.simulator.config import SimulatorConfig
from batchsub.simulator.faults import BEFORE_CREATE, Fault, FaultPicker, RateWindow
from batchsub.simulator.store import JOB_TYPE, JobStore, SimJob

PREFIX = "/v1.0/{project_id}/streaming"
MAX_BODY = 12 * 1024 * 1024  # the gateway's limit (APIG.0201 above it)
MAX_LIMIT = 100
CREATED_MESSAGE = "A Flink job is created successfully."

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class _State:
    """Per-app state the handlers share (one event loop: no locks needed)."""

    config: SimulatorConfig
    store: JobStore
    picker: FaultPicker
    window: RateWindow | None
    closing: asyncio.Event = field(default_factory=asyncio.Event)


STORE = web.AppKey("store", JobStore)
_STATE = web.AppKey("state", _State)


def json_response(status: int, payload: Any) -> web.Response:
    """A JSON answer serialised with orjson."""
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


def error_response(status: int, code: str, message: str) -> web.Response:
    """An error in DLI's shape: ``{"error_code": ..., "error_msg": ...}``."""
    return json_response(status, {"error_code": code, "error_msg": message})


def create_app(config: SimulatorConfig) -> web.Application:
    """A fresh simulator app with its own empty store, reachable as ``app[STORE]``."""
    store = JobStore()
    window = RateWindow(config.rate_limit, config.clock) if config.rate_limit > 0 else None
    app = web.Application(middlewares=[_gate], client_max_size=MAX_BODY)
    app[STORE] = store
    app[_STATE] = _State(config, store, FaultPicker(config), window)
    app.router.add_post(PREFIX + "/flink-jobs", _create_job)
    app.router.add_get(PREFIX + "/jobs", _list_jobs)
    app.router.add_get(PREFIX + "/jobs/{job_id}", _show_job)
    app.router.add_delete(PREFIX + "/jobs/{job_id}", _delete_job)
    iam.setup(app, config)  # POST /v3/auth/tokens, as the IAM endpoint
    app.on_shutdown.append(_wake_sleepers)
    return app


async def _wake_sleepers(app: web.Application) -> None:
    # Slow answers end at shutdown instead of holding the server open for slow_seconds.
    app[_STATE].closing.set()


@web.middleware
async def _gate(request: web.Request, handler: _Handler) -> web.StreamResponse:
    state = request.app[_STATE]
    arrived = time.monotonic()
    state.store.arrivals.append((state.config.clock(), request.path))
    try:
        route_error = request.match_info.http_exception
        if route_error is not None:
            raise route_error
        response = await _admit(request, state) or await handler(request)
    except web.HTTPException as exc:
        response = _http_error(exc)
    if state.config.latency > 0:
        # Counted from the request's arrival: the answer leaves `latency` after it came in,
        # whatever the handling took (as long as it took less).
        await asyncio.sleep(state.config.latency - (time.monotonic() - arrived))
    return response


def _http_error(exc: web.HTTPException) -> web.Response:
    if exc.status == 404:
        return error_response(404, "APIG.0101", "The API does not exist or has not been published")
    if exc.status == 405:
        return error_response(405, "APIG.0101", "The method is not allowed for this API")
    if exc.status == 413:
        return error_response(413, "APIG.0201", "Request entity too large")
    return error_response(exc.status, "APIG.0201", exc.reason)


async def _admit(request: web.Request, state: _State) -> web.Response | None:
    """The gateway's checks in order: credential, throttle, project. None lets it through."""
    config = state.config
    if request.path == iam.PATH:
        return None  # IAM checks the password itself
    if config.auth_enabled:
        body = await request.read() if request.can_read_body else b""
        reason = authenticate(config, request, body)
        if reason == iam.TOKEN_MUST_BE_UPDATED:
            return error_response(401, "APIG.0307", reason)
        if reason is not None:
            return error_response(
                401, "APIG.0301", f"Incorrect IAM authentication information: {reason}"
            )
    if state.window is not None and not state.window.admit():
        state.store.throttled += 1
        return error_response(
            429,
            "APIG.0308",
            "The throttling threshold has been reached: policy user over ratelimit,"
            f"limit:{state.window.limit},time:1 second",
        )
    project = request.match_info["project_id"]
    header = request.headers.get("X-Project-Id")
    if (config.project_id is not None and project != config.project_id) or (
        header is not None and header != project
    ):
        return error_response(
            403, "APIG.0302", f"The credential is not allowed to access project {project}"
        )
    return None


async def _create_job(request: web.Request) -> web.StreamResponse:
    state = request.app[_STATE]
    store = state.store
    store.create_requests += 1
    try:
        obj = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return error_response(400, "DLI.0001", "The request body is not valid JSON")
    if not isinstance(obj, dict):
        return error_response(400, "DLI.0001", "The request body must be a JSON object")
    if isinstance(obj.get("name"), str):
        store.requests_by_name[obj["name"]] += 1
    try:
        FlinkJarJob.model_validate(obj, strict=True)
    except ValidationError as exc:
        return error_response(
            400, "DLI.0001", f"Invalid request parameters: {describe_validation_error(exc)}"
        )
    return await _create_valid(request, state, obj)


async def _create_valid(
    request: web.Request, state: _State, obj: dict[str, Any]
) -> web.StreamResponse:
    config, store = state.config, state.store
    name: str = obj["name"]
    queue = obj.get("queue_name")
    if config.known_queues is not None and queue is not None and queue not in config.known_queues:
        return error_response(400, "DLI.0002", f"The queue {queue} does not exist")
    fault = state.picker.pick()
    if fault is not None:
        store.faults[fault.value] += 1
    if fault in BEFORE_CREATE:
        return _fault_before_create(state, fault)
    existing = store.named(name)
    if existing and config.duplicate_names == "reject":
        return error_response(
            400,
            "DLI.0006",
            f"Flink job name {name} already exists (job_id {existing[0].job_id})",
        )
    if config.max_jobs is not None and len(store.jobs) >= config.max_jobs:
        return error_response(
            400, "DLI.1028", f"Quota insufficient: at most {config.max_jobs} Flink jobs"
        )
    create_time = int(config.wall_clock() * 1000)
    job = store.add(name, obj, create_time, request.match_info["project_id"])
    return await _answer_created(request, state, job, fault)


def _fault_before_create(state: _State, fault: Fault | None) -> web.Response:
    if fault is Fault.DLI0999:
        return error_response(400, "DLI.0999", "server-side error")
    status = state.picker.choice((500, 502, 503))
    if status == 500:
        return error_response(500, "DLI.0999", "Internal server error")
    return error_response(status, "APIG.0202", "Backend unavailable")


async def _answer_created(
    request: web.Request, state: _State, job: SimJob, fault: Fault | None
) -> web.StreamResponse:
    if fault is Fault.DROP_AFTER_CREATE:
        _drop_connection(request)
        raise asyncio.CancelledError  # aiohttp drops a cancelled handler without answering
    if fault is Fault.ERROR_504_AFTER_CREATE:
        return error_response(504, "APIG.0203", "Backend timeout")
    if fault is Fault.DLI0999_AFTER_CREATE:
        return error_response(400, "DLI.0999", "server-side error")
    if fault is Fault.SLOW_AFTER_CREATE:
        try:
            async with asyncio.timeout(state.config.slow_seconds):
                await state.closing.wait()
        except TimeoutError:
            pass
    return json_response(
        200,
        {
            "is_success": True,
            "message": CREATED_MESSAGE,
            "job": {"job_id": job.job_id, "status_name": job.status, "status_desc": ""},
        },
    )


def _drop_connection(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.close()


class _ListQuery:
    """The list call's query, validated; ``error`` holds the first problem found."""

    __slots__ = ("detail", "error", "limit", "name", "offset", "order", "queue", "status", "tags")

    def __init__(self, request: web.Request) -> None:
        q = request.query
        self.error: str | None = None
        self.limit = self._int(q.get("limit"), "limit", 10, MAX_LIMIT)
        self.offset = self._int(q.get("offset"), "offset", 0, None)
        self.order = q.get("order", "desc")
        if self.order not in ("asc", "desc"):
            self.error = "order must be asc or desc"
        detail = q.get("show_detail", "false").lower()
        if detail not in ("true", "false"):
            self.error = "show_detail must be true or false"
        self.detail = detail == "true"
        self.name = q.get("name")
        if self.name is not None and len(self.name) > 57:
            self.error = "name can contain at most 57 characters"
        self.status = q.get("status")
        self.queue = q.get("queue_name")
        job_type = q.get("job_type")
        self.tags = _parse_tags(q.get("tags"))
        if job_type is not None and job_type != JOB_TYPE:
            self.status = "\0"  # the simulator holds only Flink Jar jobs: match nothing

    def _int(self, raw: str | None, key: str, default: int, maximum: int | None) -> int:
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            value = -1
        if value < 0 or (maximum is not None and value > maximum):
            bound = f"0 to {maximum}" if maximum is not None else "0 or more"
            self.error = f"{key} must be an integer from {bound}"
            return default
        return value

    def matches(self, job: SimJob) -> bool:
        """Whether the job passes every filter of the query."""
        if self.status is not None and job.status != self.status:
            return False
        if self.queue is not None and job.body.get("queue_name") != self.queue:
            return False
        if self.tags:
            have = {(t.get("key"), t.get("value")) for t in job.body.get("tags", ())}
            return self.tags <= have
        return True


def _parse_tags(raw: str | None) -> set[tuple[str | None, str | None]]:
    if not raw:
        return set()
    pairs = (item.partition("=") for item in raw.split(","))
    return {(k, v) for k, _, v in pairs}


async def _list_jobs(request: web.Request) -> web.StreamResponse:
    store = request.app[STORE]
    query = _ListQuery(request)
    if query.error is not None:
        return error_response(400, "DLI.0001", f"Invalid query parameter: {query.error}")
    pool = store.named(query.name) if query.name is not None else store.jobs
    found = [job for job in pool if not job.deleted and query.matches(job)]
    if query.order == "desc":
        found.reverse()
    page = found[query.offset : query.offset + query.limit]
    jobs = [job.summary(detail=query.detail) for job in page]
    if not request.app[_STATE].config.list_create_time:  # as an endpoint without the field
        for listed in jobs:
            del listed["create_time"]
    return json_response(
        200,
        {
            "is_success": "true",
            "message": "",
            "job_list": {"total_count": len(found), "jobs": jobs},
        },
    )


def _job_or_error(
    request: web.Request, find: Callable[[int], SimJob | None]
) -> SimJob | web.Response:
    """The job the path names (looked up, or deleted, by ``find``), or the API's error answer."""
    raw = request.match_info["job_id"]
    try:
        job_id = int(raw)
    except ValueError:
        return error_response(400, "DLI.0001", "job_id must be an integer")
    job = find(job_id)
    if job is None:
        return error_response(400, "DLI.16001", f"The Flink job {job_id} does not exist")
    return job


async def _delete_job(request: web.Request) -> web.StreamResponse:
    job = _job_or_error(request, request.app[STORE].delete)
    if isinstance(job, web.Response):
        return job
    return json_response(200, {"is_success": "true", "message": "The job is deleted."})


async def _show_job(request: web.Request) -> web.StreamResponse:
    job = _job_or_error(request, request.app[STORE].get)
    if isinstance(job, web.Response):
        return job
    return json_response(
        200,
        {
            "is_success": "true",
            "message": "Querying of the job details succeeds.",
            "job_detail": job.summary(detail=True),
        },
    )
