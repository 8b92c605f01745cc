"""The simulated DLI API as an aiohttp app: routes, the gateway checks, and the handlers.

Choices where the real service is undocumented or where the brief left the pick to us:

- Unknown routes answer 404 ``APIG.0101`` and a known path with another method 405, both JSON.
- Every request is recorded in ``store.arrivals``; one on a known route is then authenticated
  (401 ``APIG.0301``), rate limited (429 ``APIG.0308``), then its project checked: a project id
  other than ``config.project_id`` (or than the ``X-Project-Id`` header) answers 403
  ``APIG.0302``, as the gateway does for a credential used outside its project.
- Every call is scoped to the path's project id: each project has its own jobs (ids are unique
  across projects, as DLI's are), and another project's job id is an unknown id.
- ``name`` in the list query matches exactly; ``order`` defaults to ``desc``; ``status`` must be
  a DLI status.
- ``DELETE .../streaming/jobs/{job_id}`` deletes a job in any state; its id is never given
  again. With ``deleted_jobs="listed"`` the list still shows it ("the job records will not be
  deleted"); the other calls do not know it.
- ``GET /_simulator/stats`` is not DLI: calls by kind and per-job counts for tests and
  benchmarks, with no auth, throttle or latency, never counted.
- The life cycle (run, stop, status moving by time) is in ``lifecycle``, the batch calls in
  ``batch``, the update in ``update``, the detail's dialect in ``dialect``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import ValidationError

from batchsub.model import FlinkJarJob, describe_validation_error
from batchsub.simulator import batch, iam, update
from batchsub.simulator.auth import authenticate
from batchsub.simulator.config import SimulatorConfig
from batchsub.simulator.dialect import detail, job_config
from batchsub.simulator.faults import BEFORE_CREATE, Fault, FaultPicker, RateWindow
from batchsub.simulator.lifecycle import LIFECYCLE, STATUSES, Lifecycle
from batchsub.simulator.store import JOB_TYPE, JobStore, SimJob
from batchsub.simulator.wire import (
    error_response,
    job_or_error,
    json_object,
    json_response,
    lose_answer,
    name_taken,
    unknown_queue,
)

PREFIX = "/v1.0/{project_id}/streaming"
PRIVATE = "/_simulator/"  # not DLI: introspection for tests and benchmarks
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


def create_app(config: SimulatorConfig) -> web.Application:
    """A fresh simulator app with its own empty store, reachable as ``app[STORE]``."""
    store = JobStore(clock=config.wall_clock)
    window = RateWindow(config.rate_limit, config.clock) if config.rate_limit > 0 else None
    app = web.Application(middlewares=[_gate], client_max_size=MAX_BODY)
    app[STORE] = store
    app[_STATE] = _State(config, store, FaultPicker(config), window)
    app[LIFECYCLE] = Lifecycle(config, store)
    # A route's name is its kind in store.calls.
    routes = app.router
    routes.add_post(PREFIX + "/flink-jobs", _create_job, name="create")
    routes.add_get(PREFIX + "/jobs", _list_jobs, name="list")
    routes.add_get(PREFIX + "/jobs/{job_id}", _show_job, name="detail")
    routes.add_delete(PREFIX + "/jobs/{job_id}", _delete_job, name="delete")
    routes.add_post(PREFIX + "/jobs/run", batch.run_jobs, name="run")
    routes.add_post(PREFIX + "/jobs/stop", batch.stop_jobs, name="stop")
    routes.add_post(PREFIX + "/jobs/delete", batch.delete_jobs, name="batch_delete")
    routes.add_put(PREFIX + "/flink-jobs/{job_id}", update.update_job, name="update")
    routes.add_get(PRIVATE + "stats", _show_stats)
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
    private = request.path.startswith(PRIVATE)
    if not private:
        state.store.arrivals.append((state.config.clock(), request.path))
        kind = request.match_info.route.name
        if kind is not None:
            state.store.calls[kind] += 1
    try:
        route_error = request.match_info.http_exception
        if route_error is not None:
            raise route_error
        admitted = None if private else await _admit(request, state)
        response = admitted or await handler(request)
    except web.HTTPException as exc:
        response = _http_error(exc)
    if state.config.latency > 0 and not private:
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
    obj = await json_object(request)
    if isinstance(obj, web.Response):
        return obj
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
    project = request.match_info["project_id"]
    name: str = obj["name"]
    clash = unknown_queue(config, obj.get("queue_name"))
    if clash is not None:
        return clash
    fault = state.picker.pick()
    if fault is not None:
        store.faults[fault.value] += 1
    if fault in BEFORE_CREATE:
        return _fault_before_create(state, fault)
    clash = name_taken(config, store, project, name, None)
    if clash is not None:
        return clash
    if config.max_jobs is not None and len(store.project_jobs(project)) >= config.max_jobs:
        return error_response(
            400, "DLI.1028", f"Quota insufficient: at most {config.max_jobs} Flink jobs"
        )
    create_time = int(config.wall_clock() * 1000)
    job = store.add(name, obj, create_time, project)
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
    lost = lose_answer(request, fault)
    if lost is not None:
        return lost
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
        if self.status is not None and self.status not in STATUSES:
            self.error = "status must be a DLI job status, such as job_running"
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
    config = request.app[_STATE].config
    query = _ListQuery(request)
    if query.error is not None:
        return error_response(400, "DLI.0001", f"Invalid query parameter: {query.error}")
    found = _listed(request.app[STORE], request.match_info["project_id"], query, config)
    if query.order == "desc":
        found.reverse()
    page = found[query.offset : query.offset + query.limit]
    jobs = [job.summary() for job in page]
    if query.detail:
        for job, listed in zip(page, jobs, strict=True):
            listed["job_config"] = job_config(job.body)
            listed["tags"] = job.body.get("tags", [])
    if not config.list_create_time:  # as an endpoint without the field
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


def _listed(
    store: JobStore, project: str, query: _ListQuery, config: SimulatorConfig
) -> list[SimJob]:
    """The project's jobs the query selects, oldest first."""
    if config.deleted_jobs == "listed":  # deleted jobs too, so no by-name index
        pool: Sequence[SimJob] = store.project_jobs(project)
        if query.name is not None:
            pool = [job for job in pool if job.name == query.name]
        return [job for job in pool if query.matches(job)]
    if query.name is not None:
        pool = store.named(query.name, project)
    else:
        pool = store.project_jobs(project)
    return [job for job in pool if not job.deleted and query.matches(job)]


async def _delete_job(request: web.Request) -> web.StreamResponse:
    job = job_or_error(request, request.app[STORE])
    if isinstance(job, web.Response):
        return job
    element = request.app[LIFECYCLE].delete(job)
    return json_response(200, element)


async def _show_job(request: web.Request) -> web.StreamResponse:
    job = job_or_error(request, request.app[STORE])
    if isinstance(job, web.Response):
        return job
    return json_response(
        200,
        {
            "is_success": "true",
            "message": "Querying of the job details succeeds.",
            "job_detail": detail(job),
        },
    )


async def _show_stats(request: web.Request) -> web.StreamResponse:
    """``GET /_simulator/stats[?project_id=P]``: ``JobStore.stats`` as JSON (not DLI)."""
    return json_response(200, request.app[STORE].stats(request.query.get("project_id")))
