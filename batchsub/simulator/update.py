"""``PUT /v1.0/{project_id}/streaming/flink-jobs/{job_id}``: update a Flink Jar job in part.

Every field is optional and validated as create validates it (``job_type``, when sent, must be
``flink_jar_job``; ``tags`` are not this call's: DLI changes them through its tag API). What
is sent replaces the stored value (objects and lists whole), so the detail shows it.

A job not stopped (``RUNNING_LIKE``) takes a change only to the six fields the Terraform
provider updates in place; with ``update_running="reject"`` a change to any other field (a
value other than the one the job has, defaults included) is refused with 400 ``DLI.0007`` and
nothing is changed. ``"accept"`` takes every change, as the reference cannot rule out.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import ValidationError

from batchsub.model import FlinkJarJob, describe_validation_error
from batchsub.simulator.config import SimulatorConfig
from batchsub.simulator.dialect import effective
from batchsub.simulator.lifecycle import LIFECYCLE, RUNNING_LIKE
from batchsub.simulator.store import JOB_TYPE, SimJob, epoch_ms
from batchsub.simulator.wire import (
    error_response,
    job_or_error,
    json_object,
    json_response,
    lose_answer,
    name_taken,
    unknown_queue,
)

IN_PLACE = frozenset(
    {
        "smn_topic",
        "restart_when_exception",
        "resume_checkpoint",
        "resume_max_num",
        "obs_bucket",
        "checkpoint_path",
    }
)
UPDATED = "The Flink job is updated successfully."


async def update_job(request: web.Request) -> web.StreamResponse:
    """Apply a partial body to one job; ``{"is_success", "message", "job": {"update_time"}}``."""
    lifecycle = request.app[LIFECYCLE]
    store, config = lifecycle.store, lifecycle.config
    job = job_or_error(request, store)
    if isinstance(job, web.Response):
        return job
    obj = await json_object(request)
    if isinstance(obj, web.Response):
        return obj
    problem = _invalid(obj, job)
    if problem is not None:
        return error_response(400, "DLI.0001", f"Invalid request parameters: {problem}")
    changes = {key: value for key, value in obj.items() if key != "job_type"}
    name = changes.get("name", job.name)
    clash = unknown_queue(config, changes.get("queue_name")) or name_taken(
        config, store, job.project_id, name, job
    )
    if clash is not None:
        return clash
    refused = _refused(config, job, changes)
    if refused is not None:
        return refused
    if name != job.name:
        store.rename(job, name)
    job.body = {**job.body, **changes}
    job.update_time = epoch_ms(store.clock())
    job.counts.updates += 1
    lost = lose_answer(request, lifecycle.lost_answer("update"))
    if lost is not None:
        return lost
    answer = {"is_success": True, "message": UPDATED, "job": {"update_time": job.update_time}}
    return json_response(200, answer)


def _invalid(obj: dict[str, Any], job: SimJob) -> str | None:
    if obj.get("job_type", JOB_TYPE) != JOB_TYPE:
        return f"job_type must be {JOB_TYPE} for this call"
    if "tags" in obj:
        return "tags cannot be changed by this call (DLI changes tags through its tag API)"
    fields = {key: value for key, value in obj.items() if key != "job_type"}
    try:
        FlinkJarJob.model_validate({"name": job.name, **fields}, strict=True)
    except ValidationError as exc:
        return describe_validation_error(exc)
    return None


def _refused(config: SimulatorConfig, job: SimJob, changes: dict[str, Any]) -> web.Response | None:
    status = job.status
    if config.update_running != "reject" or status not in RUNNING_LIKE:
        return None
    moved = sorted(
        key for key, value in changes.items()
        if key not in IN_PLACE and value != effective(job.body, key)
    )  # fmt: skip
    if not moved:
        return None
    job.counts.updates_refused += 1
    return error_response(
        400,
        "DLI.0007",
        f"The job is {status}: {', '.join(moved)} cannot be changed until it is stopped "
        f"(a running job takes only {', '.join(sorted(IN_PLACE))})",
    )
