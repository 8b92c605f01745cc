"""DLI's job statuses and what each means for starting a job and for waiting until it runs.

From the statuses the official SDK's ``ListFlinkJobsRequest`` documents (and the
Terraform provider's wait lists). Where the reference is unsure (``job_idle``,
``job_downloading``) or a status is new to us, the safe reading is taken: never start a job
in it, and keep waiting rather than call it healthy or failed.
"""

from __future__ import annotations

from enum import StrEnum

INIT = "job_init"  # where create leaves a job, and where a stop can return it
SUBMITTING = "job_submitting"
RUNNING = "job_running"
EXCEPTION = "job_running_exception"  # a runtime error; restart_when_exception may revive it
FINISHED = "job_finish"
STOPPED = "job_cancel_success"

# A run would be a second start: the job is on its way up, up, or on its way down.
ACTIVE = frozenset(
    {
        SUBMITTING,
        RUNNING,
        "job_downloading",
        "job_arrearage_recovering",
        "job_savepointing",
        "job_canceling",
    }
)
# Stopped by a failure: ``status_desc`` says why. The list, as the provider reads them.
FAILED = frozenset({"job_submit_fail", EXCEPTION, "job_cancel_fail", "job_arrearage_stopped"})
# Stopped, not by a failure: by a user (or a stop call), or a job that ended.
HALTED = frozenset({STOPPED, FINISHED})
# Every status the reference names.
KNOWN = frozenset({INIT, "job_idle", *ACTIVE, *FAILED, *HALTED})


class Phase(StrEnum):
    """One status read for the start decision: may a run be sent to a job in it?"""

    NEVER_RUN = "never_run"  # job_init: start it
    ACTIVE = "active"  # never start again
    FAILED = "failed"  # stopped by a failure
    HALTED = "halted"  # stopped by a user or ended
    UNSURE = "unsure"  # job_idle or a status we do not know: never start it


def phase(status: str) -> Phase:
    """The start phase of a DLI status."""
    if status == INIT:
        return Phase.NEVER_RUN
    if status in ACTIVE:
        return Phase.ACTIVE
    if status in FAILED:
        return Phase.FAILED
    if status in HALTED:
        return Phase.HALTED
    return Phase.UNSURE


def failure_reason(status: str, status_desc: str) -> str:
    """The reason a failed job gives: its status and DLI's ``status_desc``."""
    return f"{status}: {status_desc}" if status_desc else status
