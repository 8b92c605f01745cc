"""The PostgreSQL ledger's updates (``UpdateLedger``): a table of its own, ``batchsub_updates``.

A write locks the rows of its jobs (``SELECT ... FOR UPDATE``, in name order, so two workers'
calls cannot deadlock), applies the transitions of ``ledgers._updates`` (the ones the memory
ledger applies) and writes them back, in one transaction. A row being worked on carries a
lease (``claim_until``, ``lease_seconds`` from its last step), so that a worker resuming
unfinished updates (``claim_updates``) never takes one another live worker holds.
``begin_update`` is one conditional upsert per name (``ON CONFLICT ... WHERE`` the row is
finished): two workers inserting the same new name are serialised on its key, so a name is
claimed once between them while an unfinished update holds it. ``done`` also makes the
update's body the jobs row's body (same transaction), as the SQLite ledger does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from batchsub.jobs import UpdateRecord, UpdateState, UpdateStep
from batchsub.ledgers import _updates
from batchsub.ledgers._postgres_host import Connection as _Connection
from batchsub.ledgers._postgres_host import PostgresHost
from batchsub.ledgers._rows import chunks
from batchsub.ledgers._updates import STATES_CHECK, UNFINISHED, UPDATE_COLUMNS

_CHUNK = 1000  # names per ``= ANY($2)``

# Schema v3 (after the start columns of v2): the update records.
UPDATES_MIGRATION = f"""
    CREATE TABLE IF NOT EXISTS batchsub_updates (
        project_id  text COLLATE "C" NOT NULL,
        name        text COLLATE "C" NOT NULL,
        job_id      bigint  NOT NULL,
        state       text    NOT NULL CHECK (state IN {STATES_CHECK}),
        body_hash   text    NOT NULL,
        body        bytea   NOT NULL,
        put_body    bytea   NOT NULL,
        restart     boolean NOT NULL,
        savepoint   boolean NOT NULL,
        attempts    integer NOT NULL DEFAULT 0,
        error       text,
        created_at  double precision NOT NULL,
        updated_at  double precision NOT NULL,
        claim_until double precision,
        PRIMARY KEY (project_id, name)
    );
    CREATE INDEX IF NOT EXISTS batchsub_updates_by_state ON batchsub_updates (project_id, state);
"""

_READ_SQL = f"""
SELECT {UPDATE_COLUMNS} FROM batchsub_updates WHERE project_id = $1 AND name = ANY($2::text[])
"""
_UNFINISHED_SQL = f"""
SELECT {UPDATE_COLUMNS} FROM batchsub_updates
WHERE project_id = $1 AND state = ANY($2::text[]) ORDER BY name
"""
_LOCK_SQL = _READ_SQL + " ORDER BY name FOR UPDATE"
_UPSERT_SQL = f"""
INSERT INTO batchsub_updates (project_id, {UPDATE_COLUMNS}, created_at, claim_until)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $15)
ON CONFLICT (project_id, name) DO UPDATE SET
    job_id = excluded.job_id, state = excluded.state, body_hash = excluded.body_hash,
    body = excluded.body, put_body = excluded.put_body, restart = excluded.restart,
    savepoint = excluded.savepoint, attempts = excluded.attempts, error = excluded.error,
    created_at = excluded.created_at, updated_at = excluded.updated_at,
    claim_until = excluded.claim_until
WHERE batchsub_updates.state <> ALL($14::text[])
RETURNING name
"""
_STEP_SQL = """
UPDATE batchsub_updates SET state = $3, attempts = $4, error = $5, updated_at = $6,
    claim_until = CASE WHEN $3 = ANY($7::text[]) THEN $8::double precision ELSE NULL END
WHERE project_id = $1 AND name = $2
"""
# A resume takes a row no live worker holds; its lease is renewed by every step.
_CLAIM_SQL = """
UPDATE batchsub_updates SET claim_until = $3
WHERE project_id = $1 AND name = ANY($2::text[]) AND state = ANY($4::text[])
  AND (claim_until IS NULL OR claim_until < $5)
RETURNING name
"""
_APPLIED_SQL = """
UPDATE batchsub_jobs SET body = $3, body_hash = $4, updated_at = $5
WHERE project_id = $1 AND name = $2 AND job_id = $6
"""


_FORGET_SQL = """
UPDATE batchsub_jobs SET state = 'retrying', job_id = NULL, error_code = NULL,
    http_status = NULL, adopted = false, updated_at = $1, owner = NULL, lease_until = NULL,
    error_message = 'deleted on the server; created again (apply --recreate-missing)'
WHERE project_id = $2 AND name = $3 AND state = 'created' AND job_id = $4
RETURNING name
"""


class PostgresUpdates(PostgresHost):
    """The ``UpdateLedger`` methods of ``PostgresLedger`` (which provides the statements)."""

    async def update_records(
        self, project_id: str, names: Sequence[str] | None = None
    ) -> dict[str, UpdateRecord]:
        """The records of those names (one query per 1000), or every unfinished one."""
        if names is None:
            rows = await self._fetch(_UNFINISHED_SQL, project_id, UNFINISHED)
            return {row[0]: _updates.from_row(row) for row in rows}
        found: dict[str, UpdateRecord] = {}
        for chunk in chunks(list(dict.fromkeys(names)), _CHUNK):
            for row in await self._fetch(_READ_SQL, project_id, list(chunk)):
                found[row[0]] = _updates.from_row(row)
        return found

    def begin_update(
        self, project_id: str, intents: Sequence[UpdateRecord]
    ) -> asyncio.Future[set[str]]:
        """Commit the intents of names without an unfinished update (one transaction)."""

        async def work(conn: _Connection) -> set[str]:
            claimed: set[str] = set()
            async with conn.transaction():
                now = float(self._clock())
                for intent in sorted(intents, key=lambda i: i.name):
                    row = _updates.begun(None, intent, now)
                    if row is None or intent.name in claimed:
                        continue
                    values = _updates.to_values(row)
                    name = await conn.fetchval(
                        _UPSERT_SQL, project_id, *values, now, UNFINISHED, now + self._lease
                    )
                    if name is not None:
                        claimed.add(intent.name)
            return claimed

        return self._detach(self._statement("write failed", work, new_work=True))

    def record_update(self, project_id: str, steps: Sequence[UpdateStep]) -> asyncio.Future[None]:
        """Commit steps in order; ``done`` also writes the body onto the jobs row."""

        async def work(conn: _Connection) -> None:
            async with conn.transaction():
                now = float(self._clock())
                rows = await _locked(conn, project_id, [s.name for s in steps])
                for step in steps:
                    row = _updates.stepped(rows.get(step.name), step, now)
                    if row is None:
                        continue
                    rows[step.name] = row
                    error = _updates.to_values(row)[9]
                    await conn.execute(
                        _STEP_SQL, project_id, row.name, row.state.value, row.attempts, error,
                        now, UNFINISHED, now + self._lease,
                    )  # fmt: skip
                    if row.state is UpdateState.DONE:
                        await conn.execute(
                            _APPLIED_SQL, project_id, row.name, row.body, row.body_hash, now,
                            row.job_id,
                        )  # fmt: skip

        return self._detach(self._statement("write failed", work, new_work=False))

    def claim_updates(self, project_id: str, names: Sequence[str]) -> asyncio.Future[set[str]]:
        """Claim the unfinished updates of these names no live worker holds (a lease)."""

        async def work(conn: _Connection) -> set[str]:
            now = float(self._clock())
            rows = await conn.fetch(
                _CLAIM_SQL, project_id, list(names), now + self._lease, UNFINISHED, now
            )
            return {row[0] for row in rows}

        return self._detach(self._statement("write failed", work, new_work=True))

    def forget_missing(
        self, project_id: str, jobs: Sequence[tuple[str, int]]
    ) -> asyncio.Future[set[str]]:
        """Move those created rows back to ``retrying`` (one transaction); the names moved."""

        async def work(conn: _Connection) -> set[str]:
            return await _forget(conn, float(self._clock()), project_id, jobs)

        return self._detach(self._statement("write failed", work, new_work=True))


async def _forget(
    conn: _Connection, now: float, project_id: str, jobs: Sequence[tuple[str, int]]
) -> set[str]:
    moved: set[str] = set()
    async with conn.transaction():
        for name, job_id in sorted(jobs):
            if await conn.fetchval(_FORGET_SQL, now, project_id, name, job_id) is not None:
                moved.add(name)
    return moved


async def _locked(
    conn: _Connection, project_id: str, names: Sequence[str]
) -> dict[str, UpdateRecord]:
    rows: dict[str, UpdateRecord] = {}
    for chunk in chunks(sorted(set(names)), _CHUNK):
        for row in await conn.fetch(_LOCK_SQL, project_id, list(chunk)):
            rows[row[0]] = _updates.from_row(row)
    return rows
