"""Answers on the wire: JSON bodies, DLI's error shape, answers lost on purpose, and the error
answers several calls share (a bad body, an unknown job, a missing queue, a taken name)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from batchsub.simulator.config import SimulatorConfig
from batchsub.simulator.faults import DROPS, TIMEOUTS_504, Fault
from batchsub.simulator.store import JobStore, SimJob


def json_response(status: int, payload: Any) -> web.Response:
    """A JSON answer serialised with orjson."""
    return web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")


def error_response(status: int, code: str, message: str) -> web.Response:
    """An error in DLI's shape: ``{"error_code": ..., "error_msg": ...}``."""
    return json_response(status, {"error_code": code, "error_msg": message})


def lose_answer(request: web.Request, fault: Fault | None) -> web.Response | None:
    """The answer a lost-answer fault puts in place of the real one, or None for no such fault.

    A drop closes the connection without answering; a 504 is the gateway's backend timeout.
    """
    if fault in DROPS:
        transport = request.transport
        if transport is not None:
            transport.close()
        raise asyncio.CancelledError  # aiohttp drops a cancelled handler without answering
    if fault in TIMEOUTS_504:
        return error_response(504, "APIG.0203", "Backend timeout")
    return None


async def json_object(request: web.Request) -> dict[str, Any] | web.Response:
    """The request body as a JSON object, or the API's 400 for one that is not."""
    try:
        obj = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return error_response(400, "DLI.0001", "The request body is not valid JSON")
    if not isinstance(obj, dict):
        return error_response(400, "DLI.0001", "The request body must be a JSON object")
    return obj


def job_or_error(request: web.Request, store: JobStore) -> SimJob | web.Response:
    """The live job of the path's project and ``{job_id}``, or the API's error answer."""
    raw = request.match_info["job_id"]
    try:
        job_id = int(raw)
    except ValueError:
        return error_response(400, "DLI.0001", "job_id must be an integer")
    job = store.get(job_id, request.match_info["project_id"])
    return no_such_job(job_id) if job is None else job


def no_such_job(job_id: int) -> web.Response:
    """DLI's answer for a job id the project does not hold."""
    return error_response(400, "DLI.16001", f"The Flink job {job_id} does not exist")


def unknown_queue(config: SimulatorConfig, queue: str | None) -> web.Response | None:
    """DLI's answer when a create or update body names a queue that does not exist."""
    if config.known_queues is not None and queue is not None and queue not in config.known_queues:
        return error_response(400, "DLI.0002", f"The queue {queue} does not exist")
    return None


def name_taken(
    config: SimulatorConfig, store: JobStore, project_id: str, name: str, job: SimJob | None
) -> web.Response | None:
    """DLI's answer when another job of the project has the name (``duplicate_names="reject"``)."""
    if config.duplicate_names != "reject":
        return None
    taken = next((other for other in store.named(name, project_id) if other is not job), None)
    if taken is None:
        return None
    return error_response(
        400, "DLI.0006", f"Flink job name {name} already exists (job_id {taken.job_id})"
    )
