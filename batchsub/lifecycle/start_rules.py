"""The one decision "what to do with this job's start, given the ledger and its DLI status".

The starter acts on it and ``plan`` shows it, so the two cannot disagree. The rules:

- A job that is submitting, running or being stopped (``statuses.ACTIVE``) is never started.
- A job batchsub has never started and that has never run (``job_init``) is started.
- A job stopped on purpose is not started again: one batchsub started that is back in
  ``job_init`` or ``job_cancel_success``, or one it never started that is stopped, finished
  or failed (someone else ran it). ``restart_stopped`` starts them.
- A job whose start failed (refused, or it failed before it ever ran: ``start_failed``) is not
  started again by a rerun, which reports the recorded error; ``retry_failed`` (``batchsub
  retry --start``) starts it once more. A start failure needs a fix first (a queue, CUs, a
  jar); starting it blindly on every rerun would fail again and bill for it.
- A start left ``starting`` (a lost answer, a crash) is decided by the status seen after the
  in-doubt grace: active, or any status other than the one the start was decided on, means
  the start took effect; the same stopped status means it did not, so it is sent again. A job
  in a failure status both before and after cannot tell: it is taken as started (never risk a
  second start; the waiter then reports the failure).
- ``job_idle`` and statuses the reference does not name are never started.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from batchsub.answers import JobStatus
from batchsub.jobs import StartRecord, StartState
from batchsub.lifecycle.statuses import Phase, failure_reason, phase


class StartAction(StrEnum):
    """What to do with one job's start."""

    START = "start"  # send a run
    CONFIRMED = "confirmed"  # a start left in doubt took effect: record it started
    ACTIVE = "active"  # submitting, running or stopping: nothing to send
    STOPPED = "stopped"  # stopped on purpose: not started without restart_stopped
    FAILED_BEFORE = "failed_before"  # its start failed: not started without retry_failed
    UNSURE = "unsure"  # a status it is not safe to start from
    GONE = "gone"  # the job does not exist


@dataclass(frozen=True, slots=True)
class StartOptions:
    """The user's choices for jobs a plain start leaves alone."""

    restart_stopped: bool = False  # start jobs stopped on purpose too
    retry_failed: bool = False  # start jobs whose start failed again


@dataclass(frozen=True, slots=True)
class StartDecision:
    """An action and, when it sends nothing, why (for the report and ``plan``).

    For ``FAILED_BEFORE`` the reason is the start error itself, as the ledger records it.
    """

    action: StartAction
    reason: str | None = None


def decide_start(
    record: StartRecord | None, seen: JobStatus | None, options: StartOptions
) -> StartDecision:
    """The decision for one job; ``seen`` None: the job does not exist (DLI.16001).

    A ``starting`` record must be decided only after its in-doubt grace has passed.
    """
    if seen is None:
        return StartDecision(StartAction.GONE, "the job does not exist (DLI.16001)")
    state = record.state if record is not None else None
    if state is StartState.STARTING and record is not None:
        return _in_doubt(record, seen)
    now = phase(seen.status)
    if now is Phase.ACTIVE:
        return StartDecision(StartAction.ACTIVE)
    if now is Phase.UNSURE:
        return StartDecision(StartAction.UNSURE, f"not started: status {seen.status} is unclear")
    never_ran = record is None or record.running_at is None
    if state is StartState.START_FAILED or (
        state is StartState.STARTED and now is Phase.FAILED and never_ran
    ):
        if options.retry_failed:
            return StartDecision(StartAction.START)
        error = (record.error if record is not None else None) or failure_reason(
            seen.status, seen.status_desc
        )
        return StartDecision(StartAction.FAILED_BEFORE, error)
    if now is Phase.NEVER_RUN and state is None:
        return StartDecision(StartAction.START)
    if options.restart_stopped:
        return StartDecision(StartAction.START)
    return StartDecision(StartAction.STOPPED, _stopped_reason(state, seen))


def _in_doubt(record: StartRecord, seen: JobStatus) -> StartDecision:
    now = phase(seen.status)
    before = record.last_status
    if now is Phase.ACTIVE:
        return StartDecision(StartAction.CONFIRMED)
    if now is Phase.UNSURE:
        return StartDecision(StartAction.UNSURE, f"start in doubt: status {seen.status} is unclear")
    if before is not None and seen.status != before:
        return StartDecision(StartAction.CONFIRMED)  # it moved since the start was decided
    if now is Phase.FAILED:
        return StartDecision(StartAction.CONFIRMED)  # an old failure or a new one: never resend
    if before is None and now is not Phase.NEVER_RUN:
        return StartDecision(StartAction.CONFIRMED)  # nothing to compare with: never resend
    return StartDecision(StartAction.START)  # the status the start found: it did not happen


def _stopped_reason(state: StartState | None, seen: JobStatus) -> str:
    shown = failure_reason(seen.status, seen.status_desc)
    who = "batchsub started it before" if state is StartState.STARTED else "it ran before"
    return f"not started: {who} and it is now {shown}; restart_stopped starts it"
