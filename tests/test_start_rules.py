"""The start decision: every phase of DLI status against every start state in the ledger."""

from __future__ import annotations

import pytest

from batchsub.answers import JobStatus
from batchsub.jobs import StartRecord, StartState
from batchsub.lifecycle.start_rules import StartAction, StartOptions, decide_start
from batchsub.lifecycle.statuses import ACTIVE, FAILED, KNOWN, Phase, phase

A = StartAction
PLAIN = StartOptions()
RESTART = StartOptions(restart_stopped=True)
RETRY = StartOptions(retry_failed=True)


def seen(status: str, desc: str = "") -> JobStatus:
    return JobStatus(job_id=7, name="a", status=status, status_desc=desc, create_time=1)


def record(
    state: StartState | None,
    *,
    before: str | None = None,
    running_at: float | None = None,
    error: str | None = None,
) -> StartRecord:
    return StartRecord(
        "a", 7, state, attempts=1, last_status=before, running_at=running_at, error=error
    )


def test_every_known_status_has_one_phase_and_active_ones_are_never_started() -> None:
    assert phase("job_init") is Phase.NEVER_RUN
    assert {phase(s) for s in ACTIVE} == {Phase.ACTIVE}
    assert {phase(s) for s in FAILED} == {Phase.FAILED}
    assert phase("job_idle") is Phase.UNSURE and phase("job_new_in_2030") is Phase.UNSURE
    for status in KNOWN | {"job_whatever"}:
        for state in (None, *StartState):
            for options in (PLAIN, RESTART, RETRY, StartOptions(True, True)):
                action = decide_start(record(state, before=status), seen(status), options).action
                if phase(status) in (Phase.ACTIVE, Phase.UNSURE):
                    assert action is not A.START, (status, state, options)


@pytest.mark.parametrize(
    ("state", "status", "options", "action"),
    [
        # never started by batchsub
        (None, "job_init", PLAIN, A.START),
        (None, "job_running", PLAIN, A.ACTIVE),
        (None, "job_submitting", RESTART, A.ACTIVE),
        (None, "job_canceling", RESTART, A.ACTIVE),
        (None, "job_cancel_success", PLAIN, A.STOPPED),  # run and stopped outside batchsub
        (None, "job_cancel_success", RESTART, A.START),
        (None, "job_finish", PLAIN, A.STOPPED),
        (None, "job_submit_fail", PLAIN, A.STOPPED),  # someone else's start failed
        (None, "job_submit_fail", RESTART, A.START),
        (None, "job_idle", RESTART, A.UNSURE),
        # started by batchsub before
        (StartState.STARTED, "job_running", PLAIN, A.ACTIVE),
        (StartState.STARTED, "job_init", PLAIN, A.STOPPED),  # a stop returned it to job_init
        (StartState.STARTED, "job_init", RESTART, A.START),
        (StartState.STARTED, "job_cancel_success", PLAIN, A.STOPPED),
        (StartState.STARTED, "job_cancel_success", RETRY, A.STOPPED),
        (StartState.STARTED, "job_cancel_success", RESTART, A.START),
        # its start failed
        (StartState.START_FAILED, "job_init", PLAIN, A.FAILED_BEFORE),
        (StartState.START_FAILED, "job_submit_fail", PLAIN, A.FAILED_BEFORE),
        (StartState.START_FAILED, "job_submit_fail", RESTART, A.FAILED_BEFORE),
        (StartState.START_FAILED, "job_submit_fail", RETRY, A.START),
        (StartState.START_FAILED, "job_running", RETRY, A.ACTIVE),  # started since, by someone
    ],
)
def test_decision_table(
    state: StartState | None, status: str, options: StartOptions, action: StartAction
) -> None:
    rec = None if state is None else record(state)
    assert decide_start(rec, seen(status), options).action is action


def test_started_then_failed_before_it_ever_ran_is_a_start_failure() -> None:
    failed = seen("job_submit_fail", "too few CUs")
    never_ran = decide_start(record(StartState.STARTED), failed, PLAIN)
    assert (never_ran.action, never_ran.reason) == (A.FAILED_BEFORE, "job_submit_fail: too few CUs")
    assert decide_start(record(StartState.STARTED), failed, RETRY).action is A.START
    # It ran, then failed later: not a start failure but a stopped job.
    ran = decide_start(record(StartState.STARTED, running_at=5.0), failed, PLAIN)
    assert ran.action is A.STOPPED and ran.reason is not None and "too few CUs" in ran.reason


def test_the_recorded_start_error_is_the_reason() -> None:
    rec = record(StartState.START_FAILED, error="DLI.13024 No job-running queue selected.")
    decision = decide_start(rec, seen("job_init"), PLAIN)
    assert decision.reason == "DLI.13024 No job-running queue selected."


@pytest.mark.parametrize(
    ("before", "status", "action"),
    [
        ("job_init", "job_init", A.START),  # the run never took effect: send it again
        ("job_init", "job_submitting", A.CONFIRMED),
        ("job_init", "job_running", A.CONFIRMED),
        ("job_init", "job_submit_fail", A.CONFIRMED),  # it moved: the start took effect
        ("job_init", "job_cancel_success", A.CONFIRMED),
        ("job_cancel_success", "job_cancel_success", A.START),  # restart_stopped, not taken
        ("job_cancel_success", "job_running", A.CONFIRMED),
        ("job_submit_fail", "job_submit_fail", A.CONFIRMED),  # cannot tell: never resend
        ("job_submit_fail", "job_running_exception", A.CONFIRMED),
        (None, "job_init", A.START),
        (None, "job_cancel_success", A.CONFIRMED),  # nothing to compare with: never resend
        ("job_init", "job_idle", A.UNSURE),
    ],
)
def test_a_start_in_doubt_is_decided_by_the_status_it_left(
    before: str | None, status: str, action: StartAction
) -> None:
    for options in (PLAIN, RESTART, RETRY):
        assert (
            decide_start(record(StartState.STARTING, before=before), seen(status), options).action
            is action
        )


def test_a_job_that_does_not_exist() -> None:
    for state in (None, *StartState):
        decision = decide_start(record(state), None, RESTART)
        assert decision.action is A.GONE and decision.reason is not None
