"""What the ledger records of starting jobs: the ``StartLedger`` protocol and an in-memory one.

A start is recorded on the job's own ledger row, keyed by (project_id, name) as its create
is. The state machine (``start_state``; NULL: batchsub has not started this job)::

    NULL / start_failed --begin_start--> starting          intent committed before the run call
    starting --record_start(started)--> started            DLI took it, or its status says so
    starting --record_start(start_failed)--> start_failed  refused for good, or the job is gone
    starting --record_start(None)--> NULL                  known not started: nothing in flight
    starting / started --record_status(failure)--> start_failed  failed before it was healthy

``begin_start`` is a compare-and-set on ``start_attempts`` (the attempts the decision read):
two workers that read the same row claim it once between them. A row left ``starting`` (a
lost answer, a crash) is reconciled from the job's status before anything is sent again.

Columns the SQLite and PostgreSQL ledgers need on their jobs table (schema v4; all NULL or 0
on the rows of existing ledgers, which then read as "never started"):

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
batched the same way. Every write is durable when its awaitable completes.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol

from batchsub.statuses import RUNNING


class StartState(StrEnum):
    """A job's start state in the ledger; absent (None) until batchsub starts it."""

    STARTING = "starting"  # intent committed; a run call may be in flight
    STARTED = "started"  # DLI took the start
    START_FAILED = "start_failed"  # refused for good, gone, or failed before it was healthy


@dataclass(frozen=True, slots=True)
class StartRecord:
    """What the ledger knows of one job's start."""

    name: str
    job_id: int
    state: StartState | None = None
    attempts: int = 0
    last_status: str | None = None
    status_seen_at: float | None = None  # epoch seconds
    error: str | None = None
    started_at: float | None = None
    running_at: float | None = None
    updated_at: float | None = None  # when ``state`` last changed
    claim_until: float | None = None  # a worker's claim on a starting row (shared ledgers)


@dataclass(frozen=True, slots=True)
class StartIntent:
    """The intent to send a run for one job, committed before the call."""

    name: str
    job_id: int
    status_before: str  # the status the decision to start was made on
    expected_attempts: int  # compare-and-set: ``start_attempts`` as the decision read it


@dataclass(frozen=True, slots=True)
class StartOutcome:
    """The outcome of a start: ``state`` None means known not started, nothing in flight."""

    name: str
    job_id: int
    state: StartState | None
    error: str | None = None
    status: str | None = None  # the status that decided it, when one did


@dataclass(frozen=True, slots=True)
class StatusSeen:
    """A status seen for one job; ``failure`` set: it failed before it was healthy."""

    name: str
    job_id: int
    status: str
    failure: str | None = None


class StartLedger(Protocol):
    """The ledger side of starting jobs (moves into ``protocols.py`` with the re-layout)."""

    async def start_records(self, project_id: str, names: Sequence[str]) -> dict[str, StartRecord]:
        """The start records of those names that have one (one round trip)."""
        ...

    def begin_start(self, project_id: str, intents: Sequence[StartIntent]) -> Awaitable[set[str]]:
        """Commit the intents (state starting, attempts + 1); the names claimed.

        A name is not claimed when its attempts moved since they were read, or (shared
        ledgers) another live worker holds it in ``starting``.
        """
        ...

    def record_start(self, project_id: str, outcomes: Sequence[StartOutcome]) -> Awaitable[None]:
        """Commit start outcomes, releasing the claims."""
        ...

    def record_status(self, project_id: str, seen: Sequence[StatusSeen]) -> Awaitable[None]:
        """Commit statuses seen (and failures before health), as the state machine says."""
        ...


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
