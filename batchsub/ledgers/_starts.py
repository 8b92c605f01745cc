"""The start state machine as pure functions of one row, shared by every ledger.

The memory ledger applies them to its dict; the SQLite and PostgreSQL ledgers read the rows
of a call inside one write transaction (the SQLite writer's ``BEGIN IMMEDIATE``, PostgreSQL's
``SELECT ... FOR UPDATE``), apply them, and write the rows back: so the three cannot disagree
on a transition (``StartLedger``'s docstring draws them). Also the start columns of the SQL
jobs table (schema v4 / v2) and a row of them read back as a ``StartRecord``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from batchsub.jobs import StartIntent, StartOutcome, StartRecord, StartState, StatusSeen
from batchsub.lifecycle.statuses import RUNNING
from batchsub.text import printable

# One write of a start call: an intent, an outcome or a status seen.
StartItem = StartIntent | StartOutcome | StatusSeen

# The start columns of the SQL ledgers' jobs table, in ``StartRecord`` order after the name.
START_COLUMNS = (
    "start_job_id, start_state, start_attempts, last_status, status_seen_at, start_error,"
    " started_at, running_at, start_updated_at"
)
START_WIDTH = 9  # columns in START_COLUMNS
ERROR_CHARS = 2000  # a start error longer than this is cut when stored (as create errors are)
STATES_CHECK = "('starting', 'started', 'start_failed')"


def from_row(name: str, values: Any, claim_until: float | None = None) -> StartRecord | None:
    """``START_COLUMNS`` of one row (any indexable of them) as a record; None if never touched."""
    if values[0] is None:
        return None
    return StartRecord(
        name=name,
        job_id=int(values[0]),
        state=None if values[1] is None else StartState(values[1]),
        attempts=int(values[2]),
        last_status=values[3],
        status_seen_at=values[4],
        error=values[5],
        started_at=values[6],
        running_at=values[7],
        updated_at=values[8],
        claim_until=claim_until,
    )


def to_values(row: StartRecord) -> tuple[Any, ...]:
    """A record as the values of ``START_COLUMNS`` (its text stored escaped and bounded)."""
    return (
        row.job_id,
        None if row.state is None else str(row.state),
        row.attempts,
        None if row.last_status is None else printable(row.last_status, ERROR_CHARS),
        row.status_seen_at,
        None if row.error is None else printable(row.error, ERROR_CHARS),
        row.started_at,
        row.running_at,
        row.updated_at,
    )


def current(row: StartRecord | None, name: str, job_id: int) -> StartRecord:
    """The row a write applies to: a new job under the name (another job_id) starts afresh."""
    if row is None or row.job_id != job_id:
        return StartRecord(name=name, job_id=job_id)
    return row


def begun(
    row: StartRecord | None, intent: StartIntent, now: float, lease: float | None
) -> StartRecord | None:
    """The row after ``begin_start``, or None when it is not claimed (compare-and-set)."""
    base = current(row, intent.name, intent.job_id)
    held = base.state is StartState.STARTING and (base.claim_until or 0) > now
    if base.attempts != intent.expected_attempts or held:
        return None
    return replace(
        base,
        state=StartState.STARTING,
        attempts=base.attempts + 1,
        last_status=intent.status_before,
        status_seen_at=now,
        error=None,
        started_at=None,
        running_at=None,
        updated_at=now,
        claim_until=None if lease is None else now + lease,
    )


def recorded(row: StartRecord | None, outcome: StartOutcome, now: float) -> StartRecord:
    """The row after ``record_start``: the outcome lands and the claim is released."""
    base = current(row, outcome.name, outcome.job_id)
    started = outcome.state is StartState.STARTED
    return replace(
        base,
        state=outcome.state,
        error=outcome.error,
        started_at=(base.started_at or now) if started else base.started_at,
        last_status=outcome.status or base.last_status,
        status_seen_at=now if outcome.status else base.status_seen_at,
        running_at=now if started and outcome.status == RUNNING else base.running_at,
        updated_at=now,
        claim_until=None,
    )


def seen(row: StartRecord | None, item: StatusSeen, now: float) -> StartRecord:
    """The row after ``record_status``: a failure fails a start in progress or done."""
    base = current(row, item.name, item.job_id)
    ours = base.state in (StartState.STARTING, StartState.STARTED)
    first_run = ours and item.status == RUNNING and base.running_at is None
    base = replace(
        base,
        last_status=item.status,
        status_seen_at=now,
        running_at=now if first_run else base.running_at,
    )
    if ours and item.failure is not None:
        base = replace(
            base,
            state=StartState.START_FAILED,
            error=item.failure,
            updated_at=now,
            claim_until=None,
        )
    return base


def start_names(items: Sequence[Any]) -> list[str]:
    """The distinct names of intents, outcomes or statuses, in order."""
    return list(dict.fromkeys(item.name for item in items))


def apply_steps(
    rows: Mapping[str, StartRecord | None],
    items: Sequence[StartItem],
    step: Callable[[StartRecord | None, Any], StartRecord | None],
) -> dict[str, StartRecord]:
    """``step`` applied to each item in turn over ``rows``: the rows it changed, by name.

    ``rows`` holds the names that have a jobs row (None: never touched); an item of another
    name is skipped, a SQL ledger records a start only on the row of a job it knows. A step
    giving None changes nothing (a claim not taken). The same name twice sees its first
    change, as the memory ledger's does.
    """
    state = dict(rows)
    changed: dict[str, StartRecord] = {}
    for item in items:
        if item.name not in state:
            continue
        new = step(state[item.name], item)
        if new is not None:
            state[item.name] = changed[item.name] = new
    return changed
