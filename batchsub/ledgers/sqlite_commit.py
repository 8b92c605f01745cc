"""The SQLite ledger's writes: queued with a future, group-committed on one dedicated thread.

Callers queue their write (``submit``) and get a future; one writer task commits everything
queued in one transaction, on its own plain sqlite3 connection in a thread of its own, a whole
batch per hand-off, then resolves the futures. aiosqlite's one hand-off per statement made the
ledger the bottleneck: each one waited for the GIL of a busy event loop (bench/results.md
section 10). A batch refused for the values of one write (a number SQLite cannot hold) is run
again one write at a time: only the one that fails alone fails, as ``LedgerRefusedError``. A
full disk (a file system gone read-only, an I/O error) is ``LedgerUnavailable``: the batch is
kept and tried again through the ``Outage`` (backoff, logged once each way), while later writes
queue behind it.

``ledger_error`` is the one place where a sqlite3 error becomes a ``LedgerError``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from batchsub.errors import LedgerError, LedgerRefusedError, LedgerUnavailable, one_line
from batchsub.jobs import Claim
from batchsub.ledgers._rows import COLUMNS, MESSAGE_CHARS, chunks
from batchsub.ledgers.outage import Outage
from batchsub.text import printable

_T = TypeVar("_T")
CHUNK = 500  # names per IN (...): well under SQLite's 32766 host parameters

_BEGIN_SQL = f"""
INSERT INTO jobs ({COLUMNS})
VALUES (?, ?, 'submitting', NULL, 1, NULL, NULL, NULL, ?, ?, ?, 0, ?, ?)
ON CONFLICT (project_id, name) DO UPDATE SET
    state = 'submitting', attempts = attempts + 1, source = excluded.source,
    body_hash = excluded.body_hash, body = excluded.body, updated_at = excluded.updated_at
"""

_RECORD_SQL = f"""
INSERT INTO jobs ({COLUMNS})
VALUES (?, ?, ?, ?, 0, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (project_id, name) DO UPDATE SET
    state = excluded.state, job_id = coalesce(excluded.job_id, jobs.job_id),
    error_code = excluded.error_code, error_message = excluded.error_message,
    http_status = excluded.http_status, adopted = excluded.adopted,
    updated_at = excluded.updated_at
WHERE jobs.state <> 'created'
   OR (excluded.state = 'created' AND (jobs.job_id IS NULL OR excluded.job_id IS NULL
       OR jobs.job_id = excluded.job_id))
"""

# What sqlite3 raises for the values of one write (a str it cannot encode, an int over 64
# bits, a constraint), as opposed to the database failing (OperationalError: disk, locks).
REFUSALS: tuple[type[BaseException], ...] = (
    ValueError,
    OverflowError,
    sqlite3.DataError,
    sqlite3.IntegrityError,
)
READ_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, *REFUSALS)

# Primary result codes of a file system that cannot take a write now; the statement is fine.
_UNAVAILABLE_CODES = frozenset(
    {
        sqlite3.SQLITE_FULL,  # disk full
        sqlite3.SQLITE_IOERR,  # an I/O error (EIO)
        sqlite3.SQLITE_READONLY,  # the file system went read-only
        sqlite3.SQLITE_BUSY,  # locked past the busy timeout
        sqlite3.SQLITE_LOCKED,
        sqlite3.SQLITE_NOMEM,
        sqlite3.SQLITE_PROTOCOL,
    }
)


@dataclass(slots=True)
class _Write:
    """One queued write and the future its caller awaits."""

    kind: Literal["begin", "record", "apply"]
    key: tuple[str, str]
    params: tuple[Any, ...]
    future: asyncio.Future[Any]  # the Claim for "begin", the job_id kept or None for "record"
    # "apply": ``work(connection)`` runs inside the batch's transaction; its result is given.
    work: Callable[[sqlite3.Connection], Any] | None = None
    new_work: bool = False  # a claim: stops waiting through an outage when the run stops


def ledger_error(path: Path, what: str, exc: BaseException) -> LedgerError:
    """A sqlite3 (or OS) error as the LedgerError it means, naming the file."""
    if is_unavailable(exc):
        condition = "unwritable" if what == "write failed" else "unavailable"
        reason = one_line(exc) if isinstance(exc, OSError) else str(exc)
        return LedgerUnavailable(str(path), f"{what}: {reason}", condition=condition)
    kind = LedgerRefusedError if isinstance(exc, REFUSALS) else LedgerError
    return kind(f"ledger {path}: {what}: {printable(str(exc), MESSAGE_CHARS)}")


class GroupCommitter:
    """The writer thread of one SQLite ledger, its connection, and the queue of writes.

    ``commits`` counts committed write transactions, to show that concurrent writes share them.
    """

    def __init__(self, path: Path, outage: Outage, *, busy_timeout_ms: int, max_batch: int) -> None:
        self.path = path
        self.commits = 0
        self.closing = False  # no write is retried once the ledger closes
        self._outage = outage
        self._busy_timeout_ms = busy_timeout_ms
        self._max_batch = max_batch
        self._conn: sqlite3.Connection | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue[_Write | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def open(self) -> None:
        """Start the writer thread and open its connection (WAL and schema are set up)."""
        self._executor = concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="batchsub-ledger"
        )
        self._conn = await self.in_thread(self._connect)

    def start(self) -> None:
        """Start committing what is queued."""
        self.closing = False
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._write_loop(), name=f"ledger-writer {self.path}")

    async def stop(self) -> None:
        """Commit every write queued, then stop committing."""
        self.closing = True
        task, self._task = self._task, None
        if task is not None:
            self._queue.put_nowait(None)
            await task

    async def release(self) -> None:
        """Close the connection and end the thread; raises sqlite3.Error from the close."""
        conn, self._conn = self._conn, None
        executor, self._executor = self._executor, None
        try:
            if conn is not None and executor is not None:
                await asyncio.get_running_loop().run_in_executor(executor, conn.close)
        finally:
            if executor is not None:
                executor.shutdown(wait=False)

    def submit(
        self, kind: Literal["begin", "record"], key: tuple[str, str], params: tuple[Any, ...]
    ) -> asyncio.Future[Any]:
        """Queue a write; the future gives its result once it is committed (or its error).

        A plain function, not a coroutine: the write is queued now, so a caller that is
        cancelled while waiting cannot take it back, and callers need no task to shield it.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Write(kind, key, params, future, new_work=kind == "begin"))
        return future

    def submit_work(
        self, work: Callable[[sqlite3.Connection], Any], *, new_work: bool
    ) -> asyncio.Future[Any]:
        """Queue ``work(connection)`` to run inside a group commit's transaction, as a write.

        For writes that must read their rows first (the starts' compare-and-set): the writer
        thread's ``BEGIN IMMEDIATE`` makes the read and the write one atomic step.
        """
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Write("apply", ("", ""), (), future, work, new_work))
        return future

    async def run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        """``work(connection)`` on the writer thread (a write of its own, outside the queue)."""

        def call() -> _T:
            if self._conn is None:
                raise LedgerError(f"ledger {self.path} is not open")
            return work(self._conn)

        return await self.in_thread(call)

    async def in_thread(self, fn: Callable[..., _T], *args: Any) -> _T:
        """``fn(*args)`` on the writer thread."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            conn.execute("PRAGMA synchronous = NORMAL")  # see SqliteLedger._configure
        except sqlite3.Error as exc:
            raise ledger_error(self.path, "cannot open", exc) from exc
        return conn

    async def _write_loop(self) -> None:
        """Commit whatever is queued, up to ``max_batch`` writes per transaction, until None."""
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch, stop = [first], False
            while len(batch) < self._max_batch and not self._queue.empty():
                item = self._queue.get_nowait()
                if item is None:
                    stop = True
                    break
                batch.append(item)
            await self._commit_batch(batch)
            if stop:
                return

    async def _commit_batch(self, batch: list[_Write]) -> None:
        """Run ``batch`` in one transaction, then resolve its futures (or fail them).

        A full disk keeps the batch for another try after a backoff, as long as the outage
        allows. A batch refused for the values of some write is run again one write at a
        time, so that only the writes that fail alone fail; every other failure fails the
        whole batch at once.
        """
        while batch:
            try:
                attempts = await self.in_thread(self._transaction, batch)
            except Exception as exc:  # the writer must survive to serve later writes
                if isinstance(exc, REFUSALS) and len(batch) > 1:
                    for write in batch:
                        await self._commit_batch([write])
                    return
                error = ledger_error(self.path, "write failed", exc)
                batch = await self._after_failure(batch, error)
                continue
            self._outage.recovered()
            self.commits += 1
            for write, result in zip(batch, attempts, strict=True):
                if not write.future.done():
                    write.future.set_result(result)
            return

    async def _after_failure(self, batch: list[_Write], error: LedgerError) -> list[_Write]:
        """The writes of a failed batch to try again, after a backoff; the others fail now."""
        retry = False
        if isinstance(error, LedgerUnavailable) and not self.closing:
            try:
                self._outage.failed(error)
            except LedgerError as final:  # past the outage limit (or not to wait at all)
                error = final
            else:
                retry = True
                await self._outage.pause(self._outage.delay(), new_work=False)
        again: list[_Write] = []
        for write in batch:
            # A claim stops waiting when the run stops; an outcome waits until the ledger closes.
            refusal = self._outage.refusal(new_work=write.new_work) if retry else error
            if refusal is None:
                again.append(write)
            elif not write.future.done():
                write.future.set_exception(refusal)
        return again

    def _transaction(self, batch: list[_Write]) -> list[Any]:
        """Run ``batch`` in one transaction, on the writer thread; each write's result back."""
        conn = self._conn
        if conn is None:
            raise LedgerError(f"ledger {self.path} is not open")
        results: list[Any] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for segment in _segments(batch):
                if segment[0].work is not None:  # an "apply" write is a segment of its own
                    results.append(segment[0].work(conn))
                    continue
                begins = [w for w in segment if w.kind == "begin"]
                records = [w for w in segment if w.kind == "record"]
                if begins:
                    conn.executemany(_BEGIN_SQL, [w.params for w in begins])
                kept: dict[tuple[str, str], int] = {}
                if records:
                    changed = conn.executemany(_RECORD_SQL, [w.params for w in records]).rowcount
                    if changed != len(records):  # some skipped: a created one over another id?
                        kept = _kept_ids(conn, records)
                counts = _attempts(conn, [w.key for w in begins])
                results.extend(
                    Claim(counts[w.key]) if w.kind == "begin" else kept.get(w.key) for w in segment
                )
            conn.execute("COMMIT")
        except BaseException:
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                pass  # SQLite may have rolled back already (e.g. on a full disk)
            raise
        return results


def _kept_ids(conn: sqlite3.Connection, records: list[_Write]) -> dict[tuple[str, str], int]:
    """For ``created`` writes that carried a job_id other than the row's: the job_id kept."""
    kept: dict[tuple[str, str], int] = {}
    for write in records:
        state, job_id = write.params[2], write.params[3]
        if state != "created" or job_id is None:
            continue
        row = conn.execute(
            "SELECT job_id FROM jobs WHERE project_id = ? AND name = ? AND state = 'created'",
            write.key,
        ).fetchone()
        if row is not None and row[0] is not None and row[0] != job_id:
            kept[write.key] = row[0]
    return kept


def is_unavailable(exc: BaseException) -> bool:
    """True when the file system cannot take the write now (full, read-only, failing)."""
    if isinstance(exc, OSError):
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    return isinstance(exc, sqlite3.Error) and code is not None and code & 0xFF in _UNAVAILABLE_CODES


def _attempts(conn: sqlite3.Connection, keys: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    """The attempt counts of ``keys`` inside the current transaction."""
    by_project: dict[str, list[str]] = {}
    for project_id, name in keys:
        by_project.setdefault(project_id, []).append(name)
    counts: dict[tuple[str, str], int] = {}
    for project_id, names in by_project.items():
        for chunk in chunks(names, CHUNK):
            marks = ",".join("?" * len(chunk))
            rows = conn.execute(
                f"SELECT name, attempts FROM jobs WHERE project_id = ? AND name IN ({marks})",
                (project_id, *chunk),
            )
            counts.update(((project_id, row[0]), row[1]) for row in rows)
    return counts


def _segments(batch: Iterable[_Write]) -> Iterable[list[_Write]]:
    """Split a batch so no job appears twice in a segment; writes to distinct jobs commute.

    An "apply" write is a segment of its own, in its place in the batch.
    """
    segment: list[_Write] = []
    seen: set[tuple[str, str]] = set()
    for write in batch:
        if write.work is not None:  # alone, in its place: it may touch any job
            if segment:
                yield segment
            yield [write]
            segment, seen = [], set()
            continue
        if write.key in seen:
            yield segment
            segment, seen = [], set()
        segment.append(write)
        seen.add(write.key)
    if segment:
        yield segment
