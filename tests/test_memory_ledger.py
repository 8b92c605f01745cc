"""The in-memory StartLedger: the state machine the SQL ledgers will mirror, and its claims."""

from __future__ import annotations

from batchsub.jobs import StartIntent, StartOutcome, StartState, StatusSeen
from batchsub.ledgers.memory import MemoryStartLedger
from tests.support import FakeClock

P = "proj"


def intent(
    name: str = "a", job_id: int = 7, attempts: int = 0, before: str = "job_init"
) -> StartIntent:
    return StartIntent(name, job_id, before, attempts)


async def test_intent_then_started_then_running_then_failure() -> None:
    clock = FakeClock(100.0)
    ledger = MemoryStartLedger(clock=clock)
    assert await ledger.start_records(P, ["a"]) == {}
    assert await ledger.begin_start(P, [intent()]) == {"a"}
    row = (await ledger.start_records(P, ["a"]))["a"]
    assert (row.state, row.attempts, row.last_status, row.updated_at) == (
        StartState.STARTING,
        1,
        "job_init",
        100.0,
    )
    clock.now = 101.0
    await ledger.record_start(P, [StartOutcome("a", 7, StartState.STARTED)])
    clock.now = 103.0
    await ledger.record_status(P, [StatusSeen("a", 7, "job_running")])
    clock.now = 104.0
    await ledger.record_status(P, [StatusSeen("a", 7, "job_running")])
    row = ledger.rows(P)["a"]
    assert (row.state, row.started_at, row.running_at, row.status_seen_at) == (
        StartState.STARTED,
        101.0,
        103.0,
        104.0,
    )
    await ledger.record_status(P, [StatusSeen("a", 7, "job_running_exception", "boom")])
    row = ledger.rows(P)["a"]
    assert (row.state, row.error, row.last_status) == (
        StartState.START_FAILED,
        "boom",
        "job_running_exception",
    )
    # A new attempt clears what the last one left.
    assert await ledger.begin_start(P, [intent(attempts=1, before="job_running_exception")])
    row = ledger.rows(P)["a"]
    assert (row.state, row.attempts, row.error, row.started_at, row.running_at) == (
        StartState.STARTING,
        2,
        None,
        None,
        None,
    )
    assert ledger.writes == 6


async def test_begin_is_a_compare_and_set_on_the_attempts() -> None:
    ledger = MemoryStartLedger()
    assert await ledger.begin_start(P, [intent(), intent("b", 8)]) == {"a", "b"}
    # A second worker that read the rows before the first began: claims nothing.
    assert await ledger.begin_start(P, [intent(), intent("b", 8)]) == set()
    assert await ledger.begin_start(P, [intent(attempts=1)]) == {"a"}
    assert ledger.rows(P)["a"].attempts == 2


async def test_a_live_claim_holds_a_starting_row_and_an_expired_one_does_not() -> None:
    clock = FakeClock(0.0)
    ledger = MemoryStartLedger(clock=clock, lease_seconds=30.0)
    assert await ledger.begin_start(P, [intent()]) == {"a"}
    assert ledger.rows(P)["a"].claim_until == 30.0
    clock.now = 29.0
    assert await ledger.begin_start(P, [intent(attempts=1)]) == set()
    clock.now = 31.0
    assert await ledger.begin_start(P, [intent(attempts=1)]) == {"a"}
    await ledger.record_start(P, [StartOutcome("a", 7, StartState.STARTED)])
    assert ledger.rows(P)["a"].claim_until is None


async def test_not_started_clears_the_state_and_statuses_of_others_are_kept() -> None:
    ledger = MemoryStartLedger()
    await ledger.begin_start(P, [intent()])
    await ledger.record_start(P, [StartOutcome("a", 7, None, "not started: run interrupted")])
    row = ledger.rows(P)["a"]
    assert (row.state, row.error) == (None, "not started: run interrupted")
    # A job batchsub never started: its status is recorded, a failure does not touch its state.
    await ledger.record_status(P, [StatusSeen("b", 8, "job_submit_fail", "someone else's")])
    other = ledger.rows(P)["b"]
    assert (other.state, other.last_status, other.error, other.running_at) == (
        None,
        "job_submit_fail",
        None,
        None,
    )


async def test_a_new_job_under_the_same_name_starts_from_nothing() -> None:
    ledger = MemoryStartLedger()
    await ledger.begin_start(P, [intent()])
    await ledger.record_start(P, [StartOutcome("a", 7, StartState.START_FAILED, "x")])
    assert await ledger.begin_start(P, [intent(job_id=9)]) == {"a"}  # attempts counted anew
    row = ledger.rows(P)["a"]
    assert (row.job_id, row.attempts) == (9, 1)
    assert ledger.rows("other") == {}


async def test_on_write_is_called_after_each_commit() -> None:
    seen: list[str] = []
    ledger = MemoryStartLedger(on_write=seen.append)
    await ledger.begin_start(P, [intent()])
    await ledger.record_start(P, [StartOutcome("a", 7, StartState.STARTED)])
    await ledger.record_status(P, [StatusSeen("a", 7, "job_running")])
    assert seen == ["begin_start", "record_start", "record_status"]
