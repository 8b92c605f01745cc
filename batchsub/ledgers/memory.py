"""An in-memory ``StartLedger``, for tests and benchmarks; the SQL ledgers mirror it.

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

Writes: each call is one transaction that reads its rows (PostgreSQL: ``FOR UPDATE``, in name
order), applies the transitions of ``_starts`` (the very functions this ledger applies) and
writes the rows back, so the compare-and-set of ``begin_start`` is atomic on every backend.
SQLite keeps no ``start_claim_until``: one process owns the file, so its ``starting`` rows
carry no claim, as this ledger's without ``lease_seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from batchsub.jobs import StartIntent, StartOutcome, StartRecord, StatusSeen
from batchsub.ledgers import _starts


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
            row = _starts.begun(self._rows.get((project_id, intent.name)), intent, now, self._lease)
            if row is not None:
                self._rows[(project_id, intent.name)] = row
                claimed.add(intent.name)
        self._committed("begin_start")
        return claimed

    async def record_start(self, project_id: str, outcomes: Sequence[StartOutcome]) -> None:
        """Commit the outcomes of starts."""
        now = self._clock()
        for outcome in outcomes:
            key = (project_id, outcome.name)
            self._rows[key] = _starts.recorded(self._rows.get(key), outcome, now)
        self._committed("record_start")

    async def record_status(self, project_id: str, seen: Sequence[StatusSeen]) -> None:
        """Commit the statuses seen; a failure fails a start in progress or done."""
        now = self._clock()
        for item in seen:
            key = (project_id, item.name)
            self._rows[key] = _starts.seen(self._rows.get(key), item, now)
        self._committed("record_status")

    def _committed(self, what: str) -> None:
        self.writes += 1
        if self._on_write is not None:
            self._on_write(what)
