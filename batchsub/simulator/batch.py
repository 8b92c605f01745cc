"""Run, stop and batch delete: a body of job ids, an answer array without ids, in their order.

A bad body (not JSON, not an object, an unknown field, ``job_ids`` empty, not ids, or longer
than ``max_job_ids``; the real limit is undocumented) is a 400 ``DLI.0001`` and nothing is
done. An id the project does not hold is a failed element (``unknown_job_ids="element"``) or
a 400 ``DLI.16001`` for the whole call with nothing done (``"error"``): the reference does
not say which. Ids are handled in order, so ``[5, 5]`` runs job 5, then finds it submitting.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from batchsub.simulator.lifecycle import LIFECYCLE, Lifecycle, element
from batchsub.simulator.store import SimJob
from batchsub.simulator.wire import (
    error_response,
    json_object,
    json_response,
    lose_answer,
    no_such_job,
)

_MAX_ID = 2**63 - 1  # job ids are Java longs
NO_SUCH_JOB = "The job does not exist."

_Act = Callable[[Lifecycle, SimJob, bool], dict[str, Any]]


async def run_jobs(request: web.Request) -> web.StreamResponse:
    """``POST .../streaming/jobs/run`` ``{"job_ids": [...], "resume_savepoint": bool}``."""
    return await _batch(request, "run", "resume_savepoint", Lifecycle.run)


async def stop_jobs(request: web.Request) -> web.StreamResponse:
    """``POST .../streaming/jobs/stop`` ``{"job_ids": [...], "trigger_savepoint": bool}``."""
    return await _batch(request, "stop", "trigger_savepoint", Lifecycle.stop)


async def delete_jobs(request: web.Request) -> web.StreamResponse:
    """``POST .../streaming/jobs/delete`` ``{"job_ids": [...]}``."""
    return await _batch(request, "delete", None, lambda lc, job, _: lc.delete(job))


async def _batch(request: web.Request, kind: str, flag: str | None, act: _Act) -> web.Response:
    lifecycle = request.app[LIFECYCLE]
    store = lifecycle.store
    obj = await json_object(request)
    if isinstance(obj, web.Response):
        return obj
    parsed = parse_job_ids(obj, flag, lifecycle.config.max_job_ids)
    if isinstance(parsed, str):
        return error_response(400, "DLI.0001", f"Invalid request parameters: {parsed}")
    ids, on = parsed
    project = request.match_info["project_id"]
    if lifecycle.config.unknown_job_ids == "error":
        missing = next((i for i in ids if store.get(i, project) is None), None)
        if missing is not None:
            return no_such_job(missing)
    answer = []
    for job_id in ids:
        job = store.get(job_id, project)  # looked up in turn: an earlier element may delete it
        answer.append(element(False, NO_SUCH_JOB) if job is None else act(lifecycle, job, on))
    if kind != "delete":
        lost = lose_answer(request, lifecycle.lost_answer(kind))
        if lost is not None:
            return lost
    return json_response(200, answer)


def parse_job_ids(obj: dict[str, Any], flag: str | None, most: int) -> tuple[list[int], bool] | str:
    """The ids and the flag's value of a batch body, or what is wrong with it."""
    unknown = sorted(set(obj) - {"job_ids", flag})
    if unknown:
        return f"{unknown[0]} is not a field of this call"
    ids = obj.get("job_ids")
    if not isinstance(ids, list) or not ids:
        return "job_ids must be a non-empty array of job ids"
    if not all(type(i) is int and 0 < i <= _MAX_ID for i in ids):
        return "job_ids must hold job ids (positive integers)"
    if len(ids) > most:
        return f"job_ids can hold at most {most} job ids (got {len(ids)})"
    on = obj.get(flag, False) if flag is not None else False
    if not isinstance(on, bool):
        return f"{flag} must be true or false"
    return ids, on
