"""The SQLite ledger's updates (``UpdateLedger``): a table of its own, ``updates``.

Each write reads its rows and writes them back inside one group-commit transaction of the
writer thread (``BEGIN IMMEDIATE``), applying the transitions of ``ledgers._updates`` (the
ones the memory ledger applies). ``done`` also makes the update's body the jobs row's body,
in the same transaction: the body batchsub last created or updated the job with, which
``run`` and ``plan`` compare a manifest with.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import aiosqlite

from batchsub.errors import LedgerError
from batchsub.jobs import UpdateRecord, UpdateState, UpdateStep
from batchsub.ledgers import _updates
from batchsub.ledgers._rows import chunks
from batchsub.ledgers._updates import STATES_CHECK, UNFINISHED, UPDATE_COLUMNS
from batchsub.ledgers.sqlite_commit import CHUNK, GroupCommitter

# Schema v5 (after the start columns of v4): the update records.
UPDATES_MIGRATION = f"""
    CREATE TABLE IF NOT EXISTS updates (
        project_id  TEXT    NOT NULL,
        name        TEXT    NOT NULL,
        job_id      INTEGER NOT NULL,
        state       TEXT    NOT NULL CHECK (state IN {STATES_CHECK}),
        body_hash   TEXT    NOT NULL,
        body        BLOB    NOT NULL,
        put_body    BLOB    NOT NULL,
        restart     INTEGER NOT NULL,
        savepoint   INTEGER NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 0,
        error       TEXT,
        created_at  REAL    NOT NULL,
        updated_at  REAL    NOT NULL,
        PRIMARY KEY (project_id, name)
    ) WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS updates_by_state ON updates (project_id, state);
"""

_READ_SQL = f"SELECT {UPDATE_COLUMNS} FROM updates WHERE project_id = ? AND name IN ({{marks}})"
_UNFINISHED_SQL = (
    f"SELECT {UPDATE_COLUMNS} FROM updates WHERE project_id = ?"
    f" AND state IN ({','.join('?' * len(UNFINISHED))}) ORDER BY name"
)
_UPSERT_SQL = f"""
INSERT INTO updates (project_id, {UPDATE_COLUMNS}, created_at)
VALUES (?, {", ".join("?" * 11)}, ?)
ON CONFLICT (project_id, name) DO UPDATE SET
    job_id = excluded.job_id, state = excluded.state, body_hash = excluded.body_hash,
    body = excluded.body, put_body = excluded.put_body, restart = excluded.restart,
    savepoint = excluded.savepoint, attempts = excluded.attempts, error = excluded.error,
    created_at = excluded.created_at, updated_at = excluded.updated_at
"""
_STEP_SQL = """
UPDATE updates SET state = ?, attempts = ?, error = ?, updated_at = ?
WHERE project_id = ? AND name = ?
"""
_APPLIED_SQL = """
UPDATE jobs SET body = ?, body_hash = ?, updated_at = ?
WHERE project_id = ? AND name = ? AND job_id = ?
"""


_FORGET_SQL = """
UPDATE jobs SET state = 'retrying', job_id = NULL, error_code = NULL, http_status = NULL,
    error_message = 'deleted on the server; created again (apply --recreate-missing)',
    adopted = 0, updated_at = ?
WHERE project_id = ? AND name = ? AND state = 'created' AND job_id = ?
"""


class SqliteUpdates:
    """The ``UpdateLedger`` methods of ``SqliteLedger`` (which provides the attributes)."""

    path: Path
    read_only: bool
    _clock: Callable[[], float]
    _committer: GroupCommitter

    async def _read(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        raise NotImplementedError

    def _require_open(self) -> aiosqlite.Connection:
        raise NotImplementedError

    async def update_records(
        self, project_id: str, names: Sequence[str] | None = None
    ) -> dict[str, UpdateRecord]:
        """The records of those names (one query per 500), or every unfinished one."""
        if names is None:
            rows = await self._read(_UNFINISHED_SQL, (project_id, *UNFINISHED))
            return {row[0]: _updates.from_row(row) for row in rows}
        found: dict[str, UpdateRecord] = {}
        for chunk, marks in _chunked(list(dict.fromkeys(names))):
            for row in await self._read(_READ_SQL.format(marks=marks), (project_id, *chunk)):
                found[row[0]] = _updates.from_row(row)
        return found

    def begin_update(
        self, project_id: str, intents: Sequence[UpdateRecord]
    ) -> asyncio.Future[set[str]]:
        """Commit the intents of names without an unfinished update (one transaction)."""
        now = self._clock()

        def work(conn: sqlite3.Connection) -> set[str]:
            rows = _rows(conn, project_id, [intent.name for intent in intents])
            claimed: set[str] = set()
            for intent in intents:
                row = _updates.begun(rows.get(intent.name), intent, now)
                if row is None or intent.name in claimed:
                    continue
                conn.execute(_UPSERT_SQL, (project_id, *_updates.to_values(row), now))
                rows[intent.name] = row
                claimed.add(intent.name)
            return claimed

        return self._update_write(work, new_work=True)

    def record_update(self, project_id: str, steps: Sequence[UpdateStep]) -> asyncio.Future[None]:
        """Commit steps in order; ``done`` also writes the body onto the jobs row."""
        now = self._clock()

        def work(conn: sqlite3.Connection) -> None:
            rows = _rows(conn, project_id, [step.name for step in steps])
            for step in steps:
                row = _updates.stepped(rows.get(step.name), step, now)
                if row is None:
                    continue
                rows[step.name] = row
                error = _updates.to_values(row)[9]
                conn.execute(
                    _STEP_SQL, (row.state.value, row.attempts, error, now, project_id, row.name)
                )
                if row.state is UpdateState.DONE:
                    conn.execute(
                        _APPLIED_SQL,
                        (row.body, row.body_hash, now, project_id, row.name, row.job_id),
                    )

        return self._update_write(work, new_work=False)

    async def claim_updates(self, project_id: str, names: Sequence[str]) -> set[str]:
        """Every unfinished one of these names: one process owns the file."""
        rows = await self.update_records(project_id, names)
        return {name for name, row in rows.items() if row.state.value in UNFINISHED}

    def forget_missing(
        self, project_id: str, jobs: Sequence[tuple[str, int]]
    ) -> asyncio.Future[set[str]]:
        """Move those created rows back to ``retrying`` (one transaction); the names moved."""
        now = self._clock()

        def work(conn: sqlite3.Connection) -> set[str]:
            moved = set()
            for name, job_id in jobs:
                if conn.execute(_FORGET_SQL, (now, project_id, name, job_id)).rowcount:
                    moved.add(name)
            return moved

        return self._update_write(work, new_work=True)

    def _update_write(
        self, work: Callable[[sqlite3.Connection], Any], *, new_work: bool
    ) -> asyncio.Future[Any]:
        self._require_open()
        if self.read_only:
            raise LedgerError(f"ledger {self.path} is open read-only")
        return self._committer.submit_work(work, new_work=new_work)


def _rows(
    conn: sqlite3.Connection, project_id: str, names: Sequence[str]
) -> dict[str, UpdateRecord]:
    rows: dict[str, UpdateRecord] = {}
    for part, marks in _chunked(list(dict.fromkeys(names))):
        for row in conn.execute(_READ_SQL.format(marks=marks), (project_id, *part)):
            rows[row[0]] = _updates.from_row(row)
    return rows


def _chunked(names: Sequence[str]) -> Iterator[tuple[Sequence[str], str]]:
    for chunk in chunks(names, CHUNK):
        yield chunk, ",".join("?" * len(chunk))
