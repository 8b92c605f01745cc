"""The one table of which job fields DLI changes on a running job in place.

The API reference does not say which fields a ``PUT .../flink-jobs/{job_id}`` may change
while the job runs. The Terraform provider (``resource_huaweicloud_dli_flinkjar_job.go``,
``updateFlinkJarJobInRunning``) PUTs these six to a running job and stops the job for any
other change, so batchsub does the same: a change to only these fields is PUT in place; a
change to any other field of a running job means stop (with a savepoint on ``--savepoint``),
wait until stopped, PUT, start again (resuming from the savepoint on ``--savepoint``).

=========================  ===================================================================
field                      why it is safe in place (the provider's reading)
=========================  ===================================================================
smn_topic                  where failure notices go; the job itself does not change
restart_when_exception     what DLI does after a failure; read only then
resume_checkpoint          whether a restart after a failure resumes from a checkpoint
resume_max_num             how many such restarts; read only then
obs_bucket                 where logs and savepoints go ("when it is not changed, no need to
                           update, otherwise the interface will return an error": a running
                           job takes it; sent only when it changed)
checkpoint_path            where checkpoints go (ignored by DLI with checkpoint_enabled)
=========================  ===================================================================

``tags`` are not changed by this call at all (DLI changes tags through its v3 tag API), and
``name`` is the job's key in batchsub: a renamed job is another job.
"""

from __future__ import annotations

from collections.abc import Iterable

IN_PLACE_FIELDS: dict[str, str] = {
    "smn_topic": "where failure notices go",
    "restart_when_exception": "what DLI does after a failure",
    "resume_checkpoint": "whether a restart after a failure resumes from a checkpoint",
    "resume_max_num": "how many restarts after failures",
    "obs_bucket": "where logs and savepoints go",
    "checkpoint_path": "where checkpoints go",
}
"""Fields DLI changes on a running job without a restart, with why (the provider's six)."""

NOT_BY_UPDATE: dict[str, str] = {
    "tags": "DLI changes tags through its tag API, not by an update",
    "name": "the name is the job's key: a renamed job is another job",
}
"""Fields an update never sends, with why: a change to one is reported, not applied."""


def in_place(field: str) -> bool:
    """Whether a running job takes a change to ``field`` without a restart."""
    return field in IN_PLACE_FIELDS


def needs_restart(fields: Iterable[str]) -> bool:
    """Whether a running job must be stopped to take a change to these fields."""
    return any(field not in IN_PLACE_FIELDS and field not in NOT_BY_UPDATE for field in fields)
