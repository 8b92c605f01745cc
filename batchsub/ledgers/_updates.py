"""The update state machine as pure functions of one row, shared by every ledger.

The memory ledger applies them to its dict; the SQLite and PostgreSQL ledgers read the rows
of a call inside one write transaction, apply them and write the rows back, so the three
cannot disagree on a transition (``UpdateLedger``'s docstring draws them). Also the columns
of the ``updates`` table (``ledgers.memory_update`` describes it) and a row read back.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from batchsub.jobs import UNFINISHED_UPDATES, UpdateRecord, UpdateState, UpdateStep
from batchsub.text import printable

UPDATE_COLUMNS = (
    "name, job_id, state, body_hash, body, put_body, restart, savepoint, attempts, error,"
    " updated_at"
)
ERROR_CHARS = 2000  # an update error longer than this is cut when stored
STATES_CHECK = "(" + ", ".join(f"'{state.value}'" for state in UpdateState) + ")"
UNFINISHED = sorted(state.value for state in UNFINISHED_UPDATES)


def from_row(values: Any) -> UpdateRecord:
    """``UPDATE_COLUMNS`` of one row (any indexable of them) as a record."""
    return UpdateRecord(
        name=values[0],
        job_id=int(values[1]),
        state=UpdateState(values[2]),
        body_hash=values[3],
        body=bytes(values[4]),
        put_body=bytes(values[5]),
        restart=bool(values[6]),
        savepoint=bool(values[7]),
        attempts=int(values[8]),
        error=values[9],
        updated_at=float(values[10]),
    )


def to_values(row: UpdateRecord) -> tuple[Any, ...]:
    """A record as the values of ``UPDATE_COLUMNS`` (its error stored escaped and bounded)."""
    return (
        row.name,
        row.job_id,
        row.state.value,
        row.body_hash,
        row.body,
        row.put_body,
        row.restart,
        row.savepoint,
        row.attempts,
        None if row.error is None else printable(row.error, ERROR_CHARS),
        row.updated_at,
    )


def begun(row: UpdateRecord | None, intent: UpdateRecord, now: float) -> UpdateRecord | None:
    """The row after ``begin_update``, or None: an unfinished update holds the name."""
    if row is not None and row.state in UNFINISHED_UPDATES:
        return None
    return replace(intent, state=UpdateState.PLANNED, attempts=0, error=None, updated_at=now)


def stepped(row: UpdateRecord | None, step: UpdateStep, now: float) -> UpdateRecord | None:
    """The row after one step of ``record_update``; None: no row of that job to move."""
    if row is None or row.job_id != step.job_id:
        return None
    moved = step.state is not row.state
    attempts = (0 if moved else row.attempts) + (1 if step.sent else 0)
    return replace(row, state=step.state, attempts=attempts, error=step.error, updated_at=now)
