"""An in-memory ``UpdateLedger``, for tests and benchmarks; the SQL ledgers mirror it.

One row per (project_id, name) in a table of its own (``updates`` in SQLite and PostgreSQL),
apart from the jobs table, so that the update records and the start records grow apart:

==============  ============  =====================================================
column          type          meaning
==============  ============  =====================================================
project_id      TEXT          the key, with name
name            TEXT
job_id          INTEGER       the job updated
state           TEXT          planned | stopping | stopped | updating | updated |
                              restarting | done | failed (CHECK)
body_hash       TEXT          sha256 of the manifest the update makes the job hold
body            BLOB/BYTEA    that manifest
put_body        BLOB/BYTEA    the PUT body (only the changed fields when in place)
restart         INTEGER/BOOL  stop, PUT, start again
savepoint       INTEGER/BOOL  the stop takes a savepoint, the start resumes from it
attempts        INTEGER       calls begun for the current step
error           TEXT NULL     why it failed
created_at      REAL          epoch s of the intent
updated_at      REAL          epoch s of the last step (the in-doubt grace counts from it)
==============  ============  =====================================================

``done`` also writes the body and body_hash onto the job's row of the jobs table (same
transaction), which this memory ledger keeps as ``applied``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from batchsub.jobs import UNFINISHED_UPDATES, UpdateRecord, UpdateState, UpdateStep
from batchsub.ledgers import _updates


class MemoryUpdateLedger:
    """An ``UpdateLedger`` in a dict. ``on_write`` is called after each committed write with
    its kind and the steps (a test "crashes" the updater there by raising)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        on_write: Callable[[str, Sequence[UpdateStep]], None] | None = None,
    ) -> None:
        self._rows: dict[tuple[str, str], UpdateRecord] = {}
        self.applied: dict[tuple[str, str], tuple[int, bytes, str]] = {}  # jobs row body
        self.forgotten: set[tuple[str, str, int]] = set()  # forget_missing
        self._clock = clock
        self._on_write = on_write
        self.writes = 0

    def rows(self, project_id: str) -> dict[str, UpdateRecord]:
        """Every record of a project, by name (for assertions)."""
        return {name: row for (project, name), row in self._rows.items() if project == project_id}

    async def update_records(
        self, project_id: str, names: Sequence[str] | None = None
    ) -> dict[str, UpdateRecord]:
        """The records of those names, or every unfinished one."""
        if names is None:
            rows = self.rows(project_id).values()
            return {row.name: row for row in rows if row.state in UNFINISHED_UPDATES}
        found = (self._rows.get((project_id, name)) for name in names)
        return {row.name: row for row in found if row is not None}

    async def begin_update(self, project_id: str, intents: Sequence[UpdateRecord]) -> set[str]:
        """Commit the intents of names without an unfinished update."""
        now = self._clock()
        claimed: set[str] = set()
        for intent in intents:
            row = _updates.begun(self._rows.get((project_id, intent.name)), intent, now)
            if row is not None:
                self._rows[(project_id, intent.name)] = row
                claimed.add(intent.name)
        steps = [UpdateStep(i.name, i.job_id, UpdateState.PLANNED) for i in intents]
        self._committed("begin_update", steps)
        return claimed

    async def record_update(self, project_id: str, steps: Sequence[UpdateStep]) -> None:
        """Commit the steps (a step for a row of another job is skipped)."""
        now = self._clock()
        for step in steps:
            key = (project_id, step.name)
            row = _updates.stepped(self._rows.get(key), step, now)
            if row is None:
                continue
            self._rows[key] = row
            if step.state is UpdateState.DONE:
                self.applied[key] = (row.job_id, row.body, row.body_hash)
        self._committed("record_update", steps)

    async def claim_updates(self, project_id: str, names: Sequence[str]) -> set[str]:
        """Every unfinished one of these names (one writer: nobody else holds them)."""
        rows = (self._rows.get((project_id, name)) for name in names)
        return {row.name for row in rows if row is not None and row.state in UNFINISHED_UPDATES}

    async def forget_missing(self, project_id: str, jobs: Sequence[tuple[str, int]]) -> set[str]:
        """Note the jobs forgotten (this ledger keeps no jobs rows)."""
        self.forgotten.update((project_id, name, job_id) for name, job_id in jobs)
        self._committed("forget_missing", [])
        return {name for name, _ in jobs}

    def _committed(self, what: str, steps: Sequence[UpdateStep]) -> None:
        self.writes += 1
        if self._on_write is not None:
            self._on_write(what, steps)
