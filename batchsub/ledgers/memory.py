"""An in-memory ``StartLedger``, for tests and benchmarks; the SQL ledgers will mirror it.

A start is recorded on the job's own ledger row, keyed by (project_id, name) as its create
is (the state machine is the ``StartLedger`` protocol's). The columns the SQLite and
PostgreSQL ledgers need on their jobs table (schema v4; all NULL or 0 on the rows of existing
ledgers, which then read as "never started"):

==================  =============  ==================================================
column              type           meaning
==================  =============  ==================================================
start_state         TEXT NULL      starting | started | start_failed (CHECK)
start_job_id        INTEGER NULL   the job_id the start state is about (a new id resets it)
start_attempts      INTEGER 0      run calls begun for this job, ever
start_error         TEXT NULL      why the last start failed (DLI's ``status_desc`` if any)
start_updated_at    REAL NULL      epoch s of the last start_state change (grace counts from it)
started_at          REAL NULL      epoch s DLI took the start (answer, or status seen)
running_at          REAL NULL      epoch s ``job_running`` was first seen after that start
last_status         TEXT NULL      the last DLI status seen (``job_running``, ...)
status_seen_at      REAL NULL      epoch s it was seen
start_claim_until   REAL NULL      PostgreSQL only: a worker's claim on a ``starting`` row
==================  =============  ==================================================

Writes: ``begin_start`` is one UPDATE per row, ``WHERE name = ? AND start_attempts = ?``
(PostgreSQL adds ``AND NOT (start_state = 'starting' AND start_claim_until > now())`` and
``RETURNING name``), in one transaction per call; ``record_start`` and ``record_status`` are
batched the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from batchsub.jobs import StartIntent, StartOutcome, StartRecord, StartState, StatusSeen
from batchsub.lifecycle.statuses import RUNNING


class MemoryStartLedger:
    """A ``StartLedger`` in a dict, for tests and benchmarks; the SQL ledgers mirror it.

    ``lease_seconds`` gives ``starting`` rows a claim, as a shared ledger does; ``on_write``
    is called after each committed write (a test can "crash" the starter there).
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        lease_seconds: float | None = None,
        on_write: Callable[[str], None] | None = None,
    ) -> None:
        self._rows: dict[tuple[str, str], StartRecord] = {}
        self._clock = clock
        self._lease = lease_seconds
        self._on_write = on_write
        self.writes = 0

    def rows(self, project_id: str) -> dict[str, StartRecord]:
        """Every record of a project, by name (for assertions)."""
        return {name: row for (project, name), row in self._rows.items() if project == project_id}

    async def start_records(self, project_id: str, names: Sequence[str]) -> dict[str, StartRecord]:
        """The records of those names that have one."""
        found = (self._rows.get((project_id, name)) for name in names)
        return {row.name: row for row in found if row is not None}

    async def begin_start(self, project_id: str, intents: Sequence[StartIntent]) -> set[str]:
        """Commit the intents whose attempts are unchanged and that no live claim holds."""
        now = self._clock()
        claimed: set[str] = set()
        for intent in intents:
            row = self._row(project_id, intent.name, intent.job_id)
            held = row.state is StartState.STARTING and (row.claim_until or 0) > now
            if row.attempts != intent.expected_attempts or held:
                continue
            self._rows[(project_id, intent.name)] = replace(
                row,
                state=StartState.STARTING,
                attempts=row.attempts + 1,
                last_status=intent.status_before,
                status_seen_at=now,
                error=None,
                started_at=None,
                running_at=None,
                updated_at=now,
                claim_until=None if self._lease is None else now + self._lease,
            )
            claimed.add(intent.name)
        self._committed("begin_start")
        return claimed

    async def record_start(self, project_id: str, outcomes: Sequence[StartOutcome]) -> None:
        """Commit the outcomes of starts."""
        now = self._clock()
        for outcome in outcomes:
            row = self._row(project_id, outcome.name, outcome.job_id)
            started = outcome.state is StartState.STARTED
            self._rows[(project_id, outcome.name)] = replace(
                row,
                state=outcome.state,
                error=outcome.error,
                started_at=(row.started_at or now) if started else row.started_at,
                last_status=outcome.status or row.last_status,
                status_seen_at=now if outcome.status else row.status_seen_at,
                running_at=now if started and outcome.status == RUNNING else row.running_at,
                updated_at=now,
                claim_until=None,
            )
        self._committed("record_start")

    async def record_status(self, project_id: str, seen: Sequence[StatusSeen]) -> None:
        """Commit the statuses seen; a failure fails a start in progress or done."""
        now = self._clock()
        for item in seen:
            row = self._row(project_id, item.name, item.job_id)
            ours = row.state in (StartState.STARTING, StartState.STARTED)
            first_run = ours and item.status == RUNNING and row.running_at is None
            row = replace(
                row,
                last_status=item.status,
                status_seen_at=now,
                running_at=now if first_run else row.running_at,
            )
            if ours and item.failure is not None:
                row = replace(
                    row,
                    state=StartState.START_FAILED,
                    error=item.failure,
                    updated_at=now,
                    claim_until=None,
                )
            self._rows[(project_id, item.name)] = row
        self._committed("record_status")

    def _row(self, project_id: str, name: str, job_id: int) -> StartRecord:
        row = self._rows.get((project_id, name))
        if row is None or row.job_id != job_id:
            return StartRecord(name=name, job_id=job_id)  # a new job under the name: reset
        return row

    def _committed(self, what: str) -> None:
        self.writes += 1
        if self._on_write is not None:
            self._on_write(what)
