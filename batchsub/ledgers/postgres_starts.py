"""The PostgreSQL ledger's starts (``StartLedger``): each call one transaction over its rows.

A start write locks the rows of its jobs (``SELECT ... FOR UPDATE``, in name order, so two
workers' calls cannot deadlock), applies the transitions of ``ledgers._starts`` (the ones the
memory ledger applies) and writes the rows back. ``begin_start`` is thus a compare-and-set on
``start_attempts``, and a ``starting`` row carries a claim (``start_claim_until``) for
``lease_seconds``: a live one is never taken, whoever holds it (as a create's live lease is
not); one whose worker died is taken once it runs out, and the job's status then says whether
its run call took effect before anything is sent again.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import asyncpg

from batchsub.jobs import StartIntent, StartOutcome, StartRecord, StatusSeen
from batchsub.ledgers import _starts
from batchsub.ledgers._postgres_host import Connection as _Connection
from batchsub.ledgers._postgres_host import PostgresHost
from batchsub.ledgers._rows import chunks
from batchsub.ledgers._starts import START_COLUMNS, START_WIDTH

_CHUNK = 1000  # names per ``= ANY($2)``

# The rows of a start write, locked in name order (two workers' calls cannot deadlock).
_START_LOCK_SQL = f"""
SELECT name, {START_COLUMNS}, start_claim_until FROM batchsub_jobs
WHERE project_id = $1 AND name = ANY($2::text[]) ORDER BY name FOR UPDATE
"""
_START_READ_SQL = f"""
SELECT name, {START_COLUMNS}, start_claim_until FROM batchsub_jobs
WHERE project_id = $1 AND name = ANY($2::text[]) AND start_job_id IS NOT NULL
"""
_START_COLUMN_NAMES = [*(c.strip() for c in START_COLUMNS.split(",")), "start_claim_until"]
_START_WRITE_SQL = (
    "UPDATE batchsub_jobs SET "
    + ", ".join(f"{column} = ${i}" for i, column in enumerate(_START_COLUMN_NAMES, 1))
    + f" WHERE project_id = ${len(_START_COLUMN_NAMES) + 1}"
    + f" AND name = ${len(_START_COLUMN_NAMES) + 2}"
)


class PostgresStarts(PostgresHost):
    """The ``StartLedger`` methods of ``PostgresLedger`` (which provides the statements)."""

    async def start_records(self, project_id: str, names: Sequence[str]) -> dict[str, StartRecord]:
        """The start records of those names that have one, one query per 1000 names."""
        found: dict[str, StartRecord] = {}
        for chunk in chunks(list(dict.fromkeys(names)), _CHUNK):
            for row in await self._fetch(_START_READ_SQL, project_id, list(chunk)):
                record = _start_record(row)
                if record is not None:
                    found[record.name] = record
        return found

    def begin_start(
        self, project_id: str, intents: Sequence[StartIntent]
    ) -> asyncio.Future[set[str]]:
        """Commit the intents whose attempts are unchanged and that no live claim holds.

        A claim lasts ``lease_seconds``: a ``starting`` row under a live one (another
        worker's run call in flight, or this worker's own) is not taken; one whose worker
        died is taken once its claim runs out. A name without a jobs row is not claimed.
        """

        def step(now: float) -> Callable[[StartRecord | None, StartIntent], StartRecord | None]:
            return lambda row, intent: _starts.begun(row, intent, now, self._lease)

        return self._detach(self._start_write(project_id, intents, step, claims=True))

    def record_start(
        self, project_id: str, outcomes: Sequence[StartOutcome]
    ) -> asyncio.Future[None]:
        """Commit start outcomes, releasing the claims (one transaction)."""

        def step(now: float) -> Callable[[StartRecord | None, StartOutcome], StartRecord]:
            return lambda row, outcome: _starts.recorded(row, outcome, now)

        return self._detach(self._start_write(project_id, outcomes, step, claims=False))

    def record_status(self, project_id: str, seen: Sequence[StatusSeen]) -> asyncio.Future[None]:
        """Commit statuses seen, and failures before health (one transaction)."""

        def step(now: float) -> Callable[[StartRecord | None, StatusSeen], StartRecord]:
            return lambda row, item: _starts.seen(row, item, now)

        return self._detach(self._start_write(project_id, seen, step, claims=False))

    async def _start_write(
        self,
        project_id: str,
        items: Sequence[_starts.StartItem],
        step: Callable[[float], Callable[[StartRecord | None, Any], StartRecord | None]],
        *,
        claims: bool,
    ) -> Any:
        """Lock the rows of ``items``, apply ``step(now)`` and write them back, in one
        transaction; the names changed when ``claims`` (else None). A claim stops waiting
        through an outage when the run stops; an outcome waits until the ledger closes."""
        names = _starts.start_names(items)

        async def work(conn: _Connection) -> set[str] | None:
            async with conn.transaction():
                now = float(self._clock())  # per try, inside the transaction
                rows = await conn.fetch(_START_LOCK_SQL, project_id, names)
                before = {row[0]: _start_record(row) for row in rows}
                changed = _starts.apply_steps(before, items, step(now))
                await conn.executemany(
                    _START_WRITE_SQL,
                    [
                        (*_starts.to_values(new), new.claim_until, project_id, name)
                        for name, new in changed.items()
                    ],
                )
            return set(changed) if claims else None

        return await self._statement("write failed", work, new_work=claims)


def _start_record(row: asyncpg.Record) -> StartRecord | None:
    """A row of name, ``START_COLUMNS``, start_claim_until as a record (None: never touched)."""
    return _starts.from_row(row[0], row[1 : 1 + START_WIDTH], row[1 + START_WIDTH])
