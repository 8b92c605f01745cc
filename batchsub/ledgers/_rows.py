"""The jobs table's rows as both ledgers keep them; the SQL itself stays with each backend.

The columns, a row read back as a ``LedgerRecord``, the values an outcome writes, the
refusal of a schema newer than this batchsub, and the two ways every row is read: names
looked up in chunks, and the whole table in keyset pages (no transaction held between
them). Text from outside (sources, API error messages) is stored escaped and bounded.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from typing import Any, Protocol, Self

from batchsub.errors import LedgerError
from batchsub.jobs import ErrorInfo, JobSpec, LedgerRecord, LedgerState
from batchsub.ledgers._starts import START_COLUMNS, from_row
from batchsub.text import printable

COLUMNS = (
    "project_id, name, state, job_id, attempts, error_code, error_message, http_status,"
    " source, body_hash, body, adopted, created_at, updated_at"
)
# What reads select: the create columns, then the start ones (schema v4 / v2). COLUMNS alone
# stays what the create writes and the older migrations name.
READ_COLUMNS = f"{COLUMNS}, {START_COLUMNS}"
PAGE_ORDER = "ORDER BY source, name, project_id"  # the keyset of ``pages``
MESSAGE_CHARS = 2000  # an error message longer than this is cut when stored

_SOURCE, _NAME, _PROJECT = 8, 1, 0  # the keyset's columns in a row
_START = 14  # the first of the start columns in a row


class Row(Protocol):
    """A row of ``READ_COLUMNS``, read by position: a sqlite3 row, or an asyncpg Record."""

    def __getitem__(self, index: int, /) -> Any: ...


def to_record(row: Row) -> LedgerRecord:
    """A row of ``READ_COLUMNS`` as a record."""
    message = row[6]
    error = None if message is None else ErrorInfo(message, code=row[5], http_status=row[7])
    return LedgerRecord(
        project_id=row[_PROJECT],
        name=row[_NAME],
        state=LedgerState(row[2]),
        job_id=row[3],
        attempts=row[4],
        error=error,
        source=row[_SOURCE],
        body_hash=row[9],
        body=bytes(row[10]),
        adopted=bool(row[11]),
        created_at=row[12],
        updated_at=row[13],
        start=from_row(row[_NAME], [row[i] for i in range(_START, _START + 9)]),
    )


def outcome_values(job: JobSpec, error: ErrorInfo | None) -> tuple[Any, ...]:
    """error_code, error_message, http_status, source, body_hash, body, as an outcome stores
    them."""
    return (
        printable(error.code, MESSAGE_CHARS) if error and error.code else None,
        printable(error.message, MESSAGE_CHARS) if error else None,
        error.http_status if error else None,
        printable(job.source),
        job.body_hash,
        job.body,
    )


def schema_too_new(ledger: str, version: int, supported: int) -> LedgerError:
    """The refusal to open a ledger that a newer batchsub migrated."""
    return LedgerError(
        f"ledger {ledger} has schema version {version}, newer than this batchsub "
        f"supports ({supported}); upgrade batchsub"
    )


def chunks(names: Sequence[str], size: int) -> Iterator[Sequence[str]]:
    """``names`` in slices of ``size``: one statement each, its parameters bounded."""
    for start in range(0, len(names), size):
        yield names[start : start + size]


async def by_name(
    names: Sequence[str], size: int, fetch: Callable[[Sequence[str]], Awaitable[Sequence[Row]]]
) -> dict[str, LedgerRecord]:
    """The records of those names that exist: ``fetch`` reads the rows of each chunk."""
    found: dict[str, LedgerRecord] = {}
    for chunk in chunks(list(dict.fromkeys(names)), size):
        found.update((rec.name, rec) for rec in map(to_record, await fetch(chunk)))
    return found


async def pages(
    size: int, fetch: Callable[[tuple[Any, ...] | None], Awaitable[Sequence[Row]]]
) -> AsyncIterator[LedgerRecord]:
    """Every record in ``PAGE_ORDER``: ``fetch(after)`` reads up to ``size`` rows past the
    keyset ``after`` (source, name, project_id; None for the first page)."""
    after: tuple[Any, ...] | None = None
    while True:
        rows = await fetch(after)
        for rec in map(to_record, rows):
            yield rec
        if len(rows) < size:
            return
        last = rows[-1]
        after = (last[_SOURCE], last[_NAME], last[_PROJECT])


class OpenedInBlock:
    """``async with ledger:`` opens the ledger for the block and closes it after."""

    async def open(self) -> None:
        """Open the ledger (each backend's own)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Close the ledger (each backend's own)."""
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
