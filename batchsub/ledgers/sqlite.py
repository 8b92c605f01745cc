"""The SQLite ledger: one row per job in a local file, for one batchsub process at a time.

Writes are durable when they return, yet cheap at thousands per second: callers queue their
write with a future, and one writer task commits everything queued in one transaction (group
commit) before resolving the futures. Reads share the connection and never see a transaction
in progress. aiosqlite and sqlite3 errors become ``LedgerError`` here, naming the file. When
a group commit fails for the values of one write (a number SQLite cannot hold, say), each
write is run again alone: only the one that fails alone fails, as ``LedgerRefusedError``.
Text from outside (sources, API error messages) is stored with control characters and lone
surrogates escaped, so it cannot fail a commit.

A full disk (or a file system gone read-only, an I/O error) is ``LedgerUnavailable``: the
writer keeps the failed batch and tries it again through the ``Outage`` (backoff, logged once
each way), while later writes queue behind it and reads wait; their callers just wait longer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

import aiosqlite
import orjson
import structlog

from batchsub.errors import LedgerError, LedgerRefusedError, LedgerUnavailable, os_reason
from batchsub.jobs import (
    IN_DOUBT_STATES,
    Claim,
    ErrorInfo,
    JobSpec,
    LedgerRecord,
    LedgerState,
    RememberedJob,
)
from batchsub.ledgers.lock import LedgerLock
from batchsub.ledgers.outage import Outage
from batchsub.text import printable

log = structlog.get_logger("batchsub.ledger")

log = structlog.get_logger("batchsub.ledger")

SCHEMA_VERSION = 3

_COLUMNS = (
    "project_id, name, state, job_id, attempts, error_code, error_message, http_status,"
    " source, body_hash, body, adopted, created_at, updated_at"
)

# The jobs table's columns and key: created WITHOUT ROWID at version 0, rebuilt as rowid at 2.
_JOBS_TABLE = """(
        project_id    TEXT    NOT NULL,
        name          TEXT    NOT NULL,
        state         TEXT    NOT NULL,
        job_id        INTEGER,
        attempts      INTEGER NOT NULL,
        error_code    TEXT,
        error_message TEXT,
        http_status   INTEGER,
        source        TEXT    NOT NULL,
        body_hash     TEXT    NOT NULL,
        body          BLOB    NOT NULL,
        adopted       INTEGER NOT NULL DEFAULT 0,
        created_at    REAL    NOT NULL,
        updated_at    REAL    NOT NULL,
        PRIMARY KEY (project_id, name)
    )"""

# _MIGRATIONS[v] takes a ledger from schema version v to v + 1 (0: a new file).
_MIGRATIONS: dict[int, str] = {
    0: f"""
    CREATE TABLE IF NOT EXISTS jobs {_JOBS_TABLE} WITHOUT ROWID;
    CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (project_id, state);
    CREATE INDEX IF NOT EXISTS jobs_by_source ON jobs (source, name, project_id);
    """,
    # The file index: manifest files whose every job exists, by metadata fingerprint.
    1: """
    CREATE TABLE IF NOT EXISTS files (
        project_id  TEXT NOT NULL,
        path        TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        names       TEXT NOT NULL,
        PRIMARY KEY (project_id, path)
    ) WITHOUT ROWID;
    """,
    # jobs becomes a rowid table. SQLite advises WITHOUT ROWID only for rows under about a
    # twentieth of a page, and a row holds its body (~1 KB): every write moved whole bodies
    # around the primary key's b-tree. With rowid, rows are appended and the key is a small
    # index; the ledger writer thread's CPU per job fell by about 40% (12,000 jobs).
    2: f"""
    CREATE TABLE jobs_rowid {_JOBS_TABLE};
    INSERT INTO jobs_rowid ({_COLUMNS}) SELECT {_COLUMNS} FROM jobs ORDER BY source, name;
    DROP TABLE jobs;
    ALTER TABLE jobs_rowid RENAME TO jobs;
    CREATE INDEX jobs_by_state ON jobs (project_id, state);
    CREATE INDEX jobs_by_source ON jobs (source, name, project_id);
    """,
}

_REMEMBER_SQL = """
INSERT INTO files (project_id, path, fingerprint, names) VALUES (?, ?, ?, ?)
ON CONFLICT (project_id, path) DO UPDATE SET
    fingerprint = excluded.fingerprint, names = excluded.names
"""

_BEGIN_SQL = f"""
INSERT INTO jobs ({_COLUMNS})
VALUES (?, ?, 'submitting', NULL, 1, NULL, NULL, NULL, ?, ?, ?, 0, ?, ?)
ON CONFLICT (project_id, name) DO UPDATE SET
    state = 'submitting', attempts = attempts + 1, source = excluded.source,
    body_hash = excluded.body_hash, body = excluded.body, updated_at = excluded.updated_at
"""

_RECORD_SQL = f"""
INSERT INTO jobs ({_COLUMNS})
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

# "+state" keeps the names looked up by the primary key: on the jobs_by_state index SQLite
# would scan every created job of the project for each chunk (a 50,000-job rerun took 5x).
_REMEMBERED_SQL = (
    "SELECT source, name, job_id, adopted FROM jobs"
    " WHERE project_id = ? AND +state = 'created' AND name IN ({marks})"
)

_T = TypeVar("_T")
_CHUNK = 500  # names per IN (...): well under SQLite's 32766 host parameters
_MESSAGE_CHARS = 2000  # an error message longer than this is cut when stored
# What sqlite3 raises for the values of one write (a str it cannot encode, an int over 64
# bits, a constraint), as opposed to the database failing (OperationalError: disk, locks).
_REFUSALS: tuple[type[BaseException], ...] = (
    ValueError,
    OverflowError,
    sqlite3.DataError,
    sqlite3.IntegrityError,
)
_READ_ERRORS: tuple[type[BaseException], ...] = (sqlite3.Error, *_REFUSALS)

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

    kind: Literal["begin", "record"]
    key: tuple[str, str]
    params: tuple[Any, ...]
    future: asyncio.Future[Any]  # the Claim for "begin", the job_id kept or None for "record"


class SqliteLedger:
    """A ``Ledger`` in one SQLite file (WAL), locked to one process, with group commit.

    ``commits`` counts committed write transactions, to show that concurrent writes share them.
    ``outage`` decides how long writes wait for a full disk to take them (by default: not).
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 5.0,
        max_batch: int = 1000,
        page_size: int = 500,
        read_only: bool = False,
        outage: Outage | None = None,
    ) -> None:
        self.path = Path(path)
        # Read-only: no lock and no writer, so status/report/plan can look at a ledger while
        # a run holds it (WAL lets readers run beside the one writer).
        self.read_only = read_only
        self.commits = 0
        self._clock = clock
        self._busy_timeout_ms = int(busy_timeout * 1000)
        self._max_batch = max_batch
        self._page_size = page_size
        self._lock = LedgerLock(self.path)
        self._conn: aiosqlite.Connection | None = None
        # Writes go through their own plain sqlite3 connection on one dedicated thread, a
        # whole batch per hop: aiosqlite's one hop per statement cost ~5 thread hand-offs per
        # commit, each waiting for the GIL of a busy event loop, and made the ledger the
        # bottleneck. Reads stay on aiosqlite; WAL gives them committed rows only.
        self._write_conn: sqlite3.Connection | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._queue: asyncio.Queue[_Write | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._closing = False
        # Without one given, a full disk fails each write at once (no waiting).
        self._outage = outage or Outage()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Lock the ledger, open it, and create or migrate its schema."""
        if self._conn is not None:
            return
        if self.read_only:
            self._conn = await self._connect()
            return
        self._outage.reopen()
        await self._outage.run(self._open_for_writing, new_work=False, startup=True)
        self._closing = False
        self._queue = asyncio.Queue()
        self._writer = asyncio.create_task(self._write_loop(), name=f"ledger-writer {self.path}")

    async def _open_for_writing(self) -> None:
        self._lock.acquire()
        self._warn_about_the_file()
        try:
            self._conn = await self._connect()
            self._executor = concurrent.futures.ThreadPoolExecutor(
                1, thread_name_prefix="batchsub-ledger"
            )
            self._write_conn = await self._in_writer(self._open_writer)
        except BaseException:
            await self._release_connections()
            raise

    async def close(self) -> None:
        """Commit every queued write, stop the writer, close the file and release the lock.

        During an outage, queued writes get one last try; those that fail raise to their
        callers (their jobs stay in doubt in the ledger, reconciled by the next run).
        """
        if self._conn is None:
            return
        self._closing = True
        self._outage.close()
        try:
            if self._writer is not None:
                self._queue.put_nowait(None)
                await self._writer
        finally:
            self._writer = None
            await self._release_connections()

    def _warn_about_the_file(self) -> None:
        # An existing ledger keeps the mode its owner gave it (a group may read it on
        # purpose), but it holds every request body: say so.
        mode = self._lock.mode
        if mode is not None and mode & 0o077:
            log.warning(
                "ledger.readable_by_others",
                ledger=str(self.path),
                mode=f"{mode:04o}",
                fix=f"chmod 600 {self.path} {self.path}-wal {self.path}-shm",
            )
        if self._lock.links > 1:
            log.warning(
                "ledger.hard_linked",
                ledger=str(self.path),
                links=self._lock.links,
                why="SQLite keeps the WAL beside the name it was opened by: always use one name",
            )

    async def _release_connections(self) -> None:
        conn, self._conn = self._conn, None
        write_conn, self._write_conn = self._write_conn, None
        executor, self._executor = self._executor, None
        try:
            if write_conn is not None:
                await self._in_writer(write_conn.close, executor)
            if conn is not None:
                await conn.close()
        except sqlite3.Error as exc:
            error = self._error("cannot close", exc)
            if not isinstance(error, LedgerUnavailable):
                raise error from exc
            # Every write has committed or failed to its caller: nothing is lost here.
            log.warning("ledger.close_failed", ledger=str(self.path), error=error.reason)
        finally:
            if executor is not None:
                executor.shutdown(wait=False)
            if not self.read_only:
                self._lock.release()

    async def _in_writer(
        self,
        fn: Callable[..., _T],
        executor: concurrent.futures.Executor | None = None,
        *args: Any,
    ) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor or self._executor, fn, *args)

    def _open_writer(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
            conn.execute("PRAGMA synchronous = NORMAL")  # see _configure
        except sqlite3.Error as exc:
            raise self._error("cannot open", exc) from exc
        return conn

    async def remembered_files(
        self, project_id: str, fingerprints: Mapping[str, str]
    ) -> dict[str, list[RememberedJob]]:
        """Unchanged files whose every job is created: their jobs, without reading them."""
        paths = [path for path in fingerprints if _encodable(path)]  # others are never stored
        remembered: dict[str, list[str]] = {}
        for chunk, marks in _chunked(paths):
            rows = await self._read(
                f"SELECT path, fingerprint, names FROM files"
                f" WHERE project_id = ? AND path IN ({marks})",
                (project_id, *chunk),
            )
            for path, fingerprint, names in rows:
                if fingerprints.get(path) == fingerprint:
                    remembered[path] = orjson.loads(names)
        wanted = list(dict.fromkeys(n for names in remembered.values() for n in names))
        jobs: dict[str, RememberedJob] = {}
        for chunk, marks in _chunked(wanted):
            rows = await self._read(_REMEMBERED_SQL.format(marks=marks), (project_id, *chunk))
            jobs.update(
                (row[1], RememberedJob(row[0], row[1], row[2], bool(row[3]))) for row in rows
            )
        # A file counts only while every job of it is still created.
        return {
            path: [jobs[name] for name in names]
            for path, names in remembered.items()
            if all(name in jobs for name in names)
        }

    async def remember_files(
        self, project_id: str, files: Sequence[tuple[str, str, Sequence[str]]]
    ) -> None:
        """Record files whose every job exists (one transaction on the writer thread)."""
        if self.read_only or not files:
            return
        # A path that is not valid Unicode (a file name in another encoding) cannot be
        # stored: that file is simply read again next time.
        rows = [
            (project_id, path, fp, orjson.dumps(list(names)).decode())
            for path, fp, names in files
            if _encodable(path)
        ]

        def write() -> None:
            conn = self._write_conn
            if conn is None:
                raise LedgerError(f"ledger {self.path} is not open")
            with conn:  # one transaction
                conn.executemany(_REMEMBER_SQL, rows)

        try:
            await self._in_writer(write)
        except sqlite3.Error as exc:
            raise self._error("write failed", exc) from exc

    async def get_many(self, project_id: str, names: Sequence[str]) -> dict[str, LedgerRecord]:
        """The records of those names that exist, one query per 500 names."""
        unique = list(dict.fromkeys(names))
        found: dict[str, LedgerRecord] = {}
        for chunk, marks in _chunked(unique):
            rows = await self._read(
                f"SELECT {_COLUMNS} FROM jobs WHERE project_id = ? AND name IN ({marks})",
                (project_id, *chunk),
            )
            found.update((rec.name, rec) for rec in map(_to_record, rows))
        return found

    def begin_attempt(self, project_id: str, job: JobSpec) -> asyncio.Future[Claim | None]:
        """Commit state ``submitting`` with attempts + 1; the future gives the claim.

        The write is queued by the call itself (it commits even if nobody awaits it), and the
        future resolves once it is committed. One process owns the file (see ``LedgerLock``),
        so no other worker can hold the job: the result is never None, and the claim never
        expires (its deadline is infinite: the hot path pays no fencing).
        """
        now = self._clock()
        params = (project_id, job.name, printable(job.source), job.body_hash, job.body, now, now)
        return self._submit("begin", (project_id, job.name), params)

    def renew(self, project_id: str, job: JobSpec, claim: Claim) -> asyncio.Future[Claim | None]:
        """The claim as it is: no other process can take a job of this file over."""
        future: asyncio.Future[Claim | None] = asyncio.get_running_loop().create_future()
        future.set_result(claim)
        return future

    def record(
        self,
        project_id: str,
        job: JobSpec,
        state: LedgerState,
        *,
        job_id: int | None = None,
        error: ErrorInfo | None = None,
        adopted: bool = False,
        attempt: int | None = None,
    ) -> asyncio.Future[int | None]:
        """Commit a state; keeps a known job_id when given None, inserts an unknown job.

        Queued by the call, like ``begin_attempt``; the future resolves once committed. A
        ``created`` row keeps the first job_id recorded: a ``created`` write carrying another
        is skipped and the future gives the one kept. ``attempt`` is not needed: one process
        writes the file, so no claim of it is ever taken over.
        """
        now = self._clock()
        params = (
            project_id,
            job.name,
            str(state),
            job_id,
            printable(error.code, _MESSAGE_CHARS) if error and error.code else None,
            printable(error.message, _MESSAGE_CHARS) if error else None,
            error.http_status if error else None,
            printable(job.source),
            job.body_hash,
            job.body,
            int(adopted),
            now,
            now,
        )
        return self._submit("record", (project_id, job.name), params)

    async def in_doubt(self, project_id: str) -> list[LedgerRecord]:
        """Records in ``submitting`` or ``unknown``: a request may have created these jobs."""
        states = sorted(str(s) for s in IN_DOUBT_STATES)
        marks = ",".join("?" * len(states))
        rows = await self._read(
            f"SELECT {_COLUMNS} FROM jobs INDEXED BY jobs_by_state"
            f" WHERE project_id = ? AND state IN ({marks})"
            " ORDER BY source, name",
            (project_id, *states),
        )
        return [_to_record(row) for row in rows]

    async def records(self, project_id: str | None = None) -> AsyncIterator[LedgerRecord]:
        """Every record (of one project, or all) by source then name, read a page at a time."""
        after: tuple[Any, ...] | None = None
        while True:
            where, params = _page_filter(project_id, after)
            rows = await self._read(
                # INDEXED BY: walk the index in order; without statistics SQLite may pick the
                # primary key and sort every row for every page.
                f"SELECT {_COLUMNS} FROM jobs INDEXED BY jobs_by_source {where}"
                " ORDER BY source, name, project_id LIMIT ?",
                (*params, self._page_size),
            )
            for rec in map(_to_record, rows):
                yield rec
            if len(rows) < self._page_size:
                return
            last = rows[-1]
            after = (last[8], last[1], last[0])

    # --- internals -------------------------------------------------------------------------

    async def _connect(self) -> aiosqlite.Connection:
        # isolation_level=None: no implicit transactions; the writer issues BEGIN/COMMIT itself.
        if self.read_only:
            uri = f"file:{urllib.parse.quote(str(self.path.absolute()))}?mode=ro"
            conn = aiosqlite.connect(uri, isolation_level=None, uri=True)
        else:
            conn = aiosqlite.connect(self.path, isolation_level=None)
        try:
            await conn
        except sqlite3.Error as exc:
            raise self._error("cannot open", exc) from exc
        try:
            await self._configure(conn)
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, sqlite3.Error):
                raise self._error("cannot open", exc) from exc
            raise
        return conn

    async def _configure(self, conn: aiosqlite.Connection) -> None:
        await conn.execute(f"PRAGMA busy_timeout = {self._busy_timeout_ms}")
        if self.read_only:
            await self._check_version(conn)
            return
        rows = list(await conn.execute_fetchall("PRAGMA journal_mode = WAL"))
        if str(rows[0][0]).lower() != "wal":
            raise LedgerError(f"cannot open ledger {self.path}: WAL mode unavailable")
        # In WAL mode, NORMAL makes each commit durable against a crash of this process
        # (kill -9 included): the commit is in the WAL before it returns. Only an OS crash or
        # power loss can drop the last commits, which FULL would prevent at an fsync each.
        await conn.execute("PRAGMA synchronous = NORMAL")
        version = await self._check_version(conn)
        while version < SCHEMA_VERSION:
            await conn.executescript(
                f"BEGIN IMMEDIATE; {_MIGRATIONS[version]}"
                f" PRAGMA user_version = {version + 1}; COMMIT;"
            )
            version += 1

    async def _check_version(self, conn: aiosqlite.Connection) -> int:
        rows = list(await conn.execute_fetchall("PRAGMA user_version"))
        version = int(rows[0][0])
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"ledger {self.path} has schema version {version}, newer than this batchsub "
                f"supports ({SCHEMA_VERSION}); upgrade batchsub"
            )
        return version

    def _error(self, what: str, exc: BaseException) -> LedgerError:
        if _is_unavailable(exc):
            condition = "unwritable" if what == "write failed" else "unavailable"
            reason = os_reason(exc) if isinstance(exc, OSError) else str(exc)
            return LedgerUnavailable(str(self.path), f"{what}: {reason}", condition=condition)
        kind = LedgerRefusedError if isinstance(exc, _REFUSALS) else LedgerError
        return kind(f"ledger {self.path}: {what}: {printable(str(exc), _MESSAGE_CHARS)}")

    async def _read(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        # Reads work on a full disk, but they start new work: they wait while writes cannot.
        await self._outage.ready()
        conn = self._require_open()
        try:
            return list(await conn.execute_fetchall(sql, params))
        except _READ_ERRORS as exc:
            raise self._error("read failed", exc) from exc

    def _require_open(self) -> aiosqlite.Connection:
        if self._conn is None or self._closing:
            raise LedgerError(f"ledger {self.path} is not open")
        return self._conn

    def _submit(
        self, kind: Literal["begin", "record"], key: tuple[str, str], params: tuple[Any, ...]
    ) -> asyncio.Future[Any]:
        # A plain function, not a coroutine: the write is queued now, so a caller that is
        # cancelled while waiting cannot take it back, and callers need no task to shield it.
        self._require_open()
        if self.read_only:
            raise LedgerError(f"ledger {self.path} is open read-only")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Write(kind, key, params, future))
        return future

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
                attempts = await self._in_writer(self._transaction, None, batch)
            except Exception as exc:  # the writer must survive to serve later writes
                if isinstance(exc, _REFUSALS) and len(batch) > 1:
                    for write in batch:
                        await self._commit_batch([write])
                    return
                batch = await self._after_failure(batch, self._error("write failed", exc))
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
        if isinstance(error, LedgerUnavailable) and not self._closing:
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
            refusal = self._outage.refusal(new_work=write.kind == "begin") if retry else error
            if refusal is None:
                again.append(write)
            elif not write.future.done():
                write.future.set_exception(refusal)
        return again

    def _transaction(self, batch: list[_Write]) -> list[Claim | int | None]:
        """Run ``batch`` in one transaction, on the writer thread; each write's result back."""
        conn = self._write_conn
        if conn is None:
            raise LedgerError(f"ledger {self.path} is not open")
        results: list[Claim | int | None] = []
        conn.execute("BEGIN IMMEDIATE")
        try:
            for segment in _segments(batch):
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
                    Claim(counts[w.key]) if w.kind == "begin" else kept.get(w.key)
                    for w in segment
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


def _is_unavailable(exc: BaseException) -> bool:
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
        for chunk, marks in _chunked(names):
            rows = conn.execute(
                f"SELECT name, attempts FROM jobs WHERE project_id = ? AND name IN ({marks})",
                (project_id, *chunk),
            )
            counts.update(((project_id, row[0]), row[1]) for row in rows)
    return counts


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _chunked(names: Sequence[str]) -> Iterator[tuple[Sequence[str], str]]:
    """``names`` in slices of _CHUNK, each with its ``?, ?, ...`` placeholders."""
    for start in range(0, len(names), _CHUNK):
        chunk = names[start : start + _CHUNK]
        yield chunk, ",".join("?" * len(chunk))


def _segments(batch: Iterable[_Write]) -> Iterable[list[_Write]]:
    """Split a batch so no job appears twice in a segment; writes to distinct jobs commute."""
    segment: list[_Write] = []
    seen: set[tuple[str, str]] = set()
    for write in batch:
        if write.key in seen:
            yield segment
            segment, seen = [], set()
        segment.append(write)
        seen.add(write.key)
    if segment:
        yield segment


def _page_filter(
    project_id: str | None, after: tuple[Any, ...] | None
) -> tuple[str, tuple[Any, ...]]:
    """The WHERE clause of a page of ``records()``: keyset paging after the last row seen."""
    clauses: list[str] = []
    params: tuple[Any, ...] = ()
    if after is not None:
        clauses.append("(source, name, project_id) > (?, ?, ?)")
        params += after
    if project_id is not None:
        clauses.append("project_id = ?")
        params += (project_id,)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), params


def _to_record(row: sqlite3.Row | tuple[Any, ...]) -> LedgerRecord:
    (project_id, name, state, job_id, attempts, code, message, status) = row[:8]
    (source, body_hash, body, adopted, created_at, updated_at) = row[8:14]
    error = None if message is None else ErrorInfo(message=message, code=code, http_status=status)
    return LedgerRecord(
        project_id=project_id,
        name=name,
        state=LedgerState(state),
        job_id=job_id,
        attempts=attempts,
        error=error,
        source=source,
        body_hash=body_hash,
        body=bytes(body),
        adopted=bool(adopted),
        created_at=created_at,
        updated_at=updated_at,
    )
