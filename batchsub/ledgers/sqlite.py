"""The SQLite ledger: one row per job in a local file, for one batchsub process at a time.

Writes are durable when they return, yet cheap at thousands per second: they are queued
and group-committed on a thread of their own (``sqlite_commit``). Reads use aiosqlite, never
see a transaction in progress, and wait while a full disk holds the writes up. aiosqlite and
sqlite3 errors become ``LedgerError`` (``sqlite_commit.ledger_error``), naming the file. Text
from outside (sources, API error messages) is stored with control characters and lone
surrogates escaped, so it cannot fail a commit.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import aiosqlite
import orjson
import structlog

from batchsub.errors import LedgerError, LedgerUnavailable
from batchsub.jobs import (
    IN_DOUBT_STATES,
    Claim,
    ErrorInfo,
    JobSpec,
    LedgerRecord,
    LedgerState,
    RememberedJob,
    StartIntent,
    StartOutcome,
    StartRecord,
    StatusSeen,
)
from batchsub.ledgers import _starts
from batchsub.ledgers._rows import (
    COLUMNS,
    PAGE_ORDER,
    READ_COLUMNS,
    OpenedInBlock,
    by_name,
    chunks,
    outcome_values,
    pages,
    schema_too_new,
    to_record,
)
from batchsub.ledgers._starts import START_COLUMNS, STATES_CHECK
from batchsub.ledgers.lock import LedgerLock
from batchsub.ledgers.outage import Outage
from batchsub.ledgers.sqlite_commit import CHUNK, READ_ERRORS, GroupCommitter, ledger_error
from batchsub.ledgers.sqlite_updates import UPDATES_MIGRATION, SqliteUpdates
from batchsub.text import printable

log = structlog.get_logger("batchsub.ledger")

SCHEMA_VERSION = 5

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
    # twentieth of a page, and a row holds its body: every write moved whole bodies around
    # the primary key's b-tree. With rowid, rows are appended and the key is a small index,
    # which the ledger writer thread's CPU per job shows (bench/results.md section 10).
    2: f"""
    CREATE TABLE jobs_rowid {_JOBS_TABLE};
    INSERT INTO jobs_rowid ({COLUMNS}) SELECT {COLUMNS} FROM jobs ORDER BY source, name;
    DROP TABLE jobs;
    ALTER TABLE jobs_rowid RENAME TO jobs;
    CREATE INDEX jobs_by_state ON jobs (project_id, state);
    CREATE INDEX jobs_by_source ON jobs (source, name, project_id);
    """,
    # Starting jobs (issue 15): each job's start state on its own row, NULL/0 on the rows
    # already there, which read as "never started" (``ledgers.memory`` has the table).
    3: f"""
    ALTER TABLE jobs ADD COLUMN start_job_id INTEGER;
    ALTER TABLE jobs ADD COLUMN start_state TEXT CHECK (start_state IN {STATES_CHECK});
    ALTER TABLE jobs ADD COLUMN start_attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN last_status TEXT;
    ALTER TABLE jobs ADD COLUMN status_seen_at REAL;
    ALTER TABLE jobs ADD COLUMN start_error TEXT;
    ALTER TABLE jobs ADD COLUMN started_at REAL;
    ALTER TABLE jobs ADD COLUMN running_at REAL;
    ALTER TABLE jobs ADD COLUMN start_updated_at REAL;
    """,
    # Updating jobs (issue 16, ``batchsub apply``): a table of its own (``sqlite_updates``).
    4: UPDATES_MIGRATION,
}

_START_READ_SQL = (
    f"SELECT name, {START_COLUMNS} FROM jobs WHERE project_id = ? AND name IN ({{marks}})"
)
_START_WRITE_SQL = (
    "UPDATE jobs SET "
    + ", ".join(f"{column.strip()} = ?" for column in START_COLUMNS.split(","))
    + " WHERE project_id = ? AND name = ?"
)

_REMEMBER_SQL = """
INSERT INTO files (project_id, path, fingerprint, names) VALUES (?, ?, ?, ?)
ON CONFLICT (project_id, path) DO UPDATE SET
    fingerprint = excluded.fingerprint, names = excluded.names
"""

# "+state" keeps the names looked up by the primary key: on the jobs_by_state index SQLite
# would scan every created job of the project for each chunk (bench/results.md section 10).
_REMEMBERED_SQL = (
    "SELECT source, name, job_id, adopted FROM jobs"
    " WHERE project_id = ? AND +state = 'created' AND name IN ({marks})"
)


class SqliteLedger(SqliteUpdates, OpenedInBlock):
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
        self._clock = clock
        self._busy_timeout_ms = int(busy_timeout * 1000)
        self._max_batch = max_batch
        self._page_size = page_size
        self._lock = LedgerLock(self.path)
        self._conn: aiosqlite.Connection | None = None
        # Without one given, a full disk fails each write at once (no waiting).
        self._outage = outage or Outage()
        # Writes go through their own connection on a thread of their own; WAL gives the
        # reads (on aiosqlite) committed rows only.
        self._committer = GroupCommitter(
            self.path, self._outage, busy_timeout_ms=self._busy_timeout_ms, max_batch=max_batch
        )

    @property
    def commits(self) -> int:
        """Committed write transactions: concurrent writes share them."""
        return self._committer.commits

    async def open(self) -> None:
        """Lock the ledger, open it, and create or migrate its schema."""
        if self._conn is not None:
            return
        if self.read_only:
            self._conn = await self._connect()
            return
        self._outage.reopen()
        await self._outage.run(self._open_for_writing, new_work=False, startup=True)
        self._committer.start()

    async def _open_for_writing(self) -> None:
        self._lock.acquire()
        self._warn_about_the_file()
        try:
            self._conn = await self._connect()
            await self._committer.open()
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
        self._committer.closing = True  # first: a write failing now is not tried again
        self._outage.close()
        try:
            await self._committer.stop()
        finally:
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
        try:
            await self._committer.release()
            if conn is not None:
                await conn.close()
        except sqlite3.Error as exc:
            error = ledger_error(self.path, "cannot close", exc)
            if not isinstance(error, LedgerUnavailable):
                raise error from exc
            # Every write has committed or failed to its caller: nothing is lost here.
            log.warning("ledger.close_failed", ledger=str(self.path), error=error.reason)
        finally:
            if not self.read_only:
                self._lock.release()

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

        def write(conn: sqlite3.Connection) -> None:
            with conn:  # one transaction
                conn.executemany(_REMEMBER_SQL, rows)

        try:
            await self._committer.run(write)
        except sqlite3.Error as exc:
            raise ledger_error(self.path, "write failed", exc) from exc

    async def get_many(self, project_id: str, names: Sequence[str]) -> dict[str, LedgerRecord]:
        """The records of those names that exist, one query per 500 names."""

        async def fetch(chunk: Sequence[str]) -> list[sqlite3.Row]:
            marks = ",".join("?" * len(chunk))
            return await self._read(
                f"SELECT {READ_COLUMNS} FROM jobs WHERE project_id = ? AND name IN ({marks})",
                (project_id, *chunk),
            )

        return await by_name(names, CHUNK, fetch)

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
            *outcome_values(job, error),
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
            f"SELECT {READ_COLUMNS} FROM jobs INDEXED BY jobs_by_state"
            f" WHERE project_id = ? AND state IN ({marks})"
            " ORDER BY source, name",
            (project_id, *states),
        )
        return [to_record(row) for row in rows]

    async def records(self, project_id: str | None = None) -> AsyncIterator[LedgerRecord]:
        """Every record (of one project, or all) by source then name, read a page at a time."""

        async def fetch(after: tuple[Any, ...] | None) -> list[sqlite3.Row]:
            where, params = _page_filter(project_id, after)
            return await self._read(
                # INDEXED BY: walk the index in order; without statistics SQLite may pick the
                # primary key and sort every row for every page.
                f"SELECT {READ_COLUMNS} FROM jobs INDEXED BY jobs_by_source {where}"
                f" {PAGE_ORDER} LIMIT ?",
                (*params, self._page_size),
            )

        async for record in pages(self._page_size, fetch):
            yield record

    # --- starts (StartLedger) ---------------------------------------------------------------

    async def start_records(self, project_id: str, names: Sequence[str]) -> dict[str, StartRecord]:
        """The start records of those names that have one, one query per 500 names."""
        found: dict[str, StartRecord] = {}
        for chunk, marks in _chunked(list(dict.fromkeys(names))):
            for row in await self._read(_START_READ_SQL.format(marks=marks), (project_id, *chunk)):
                record = _starts.from_row(row[0], row[1:])
                if record is not None:
                    found[record.name] = record
        return found

    def begin_start(
        self, project_id: str, intents: Sequence[StartIntent]
    ) -> asyncio.Future[set[str]]:
        """Commit the intents whose attempts are unchanged: one transaction on the writer.

        A name without a jobs row is not claimed (only a job the ledger knows is started).
        One process owns the file, so a ``starting`` row carries no claim to wait out.
        """
        now = self._clock()

        def step(row: StartRecord | None, intent: StartIntent) -> StartRecord | None:
            return _starts.begun(row, intent, now, None)

        return self._start_write(project_id, intents, step, claims=True)

    def record_start(
        self, project_id: str, outcomes: Sequence[StartOutcome]
    ) -> asyncio.Future[None]:
        """Commit start outcomes (one transaction on the writer thread)."""
        now = self._clock()

        def step(row: StartRecord | None, outcome: StartOutcome) -> StartRecord:
            return _starts.recorded(row, outcome, now)

        return self._start_write(project_id, outcomes, step, claims=False)

    def record_status(self, project_id: str, seen: Sequence[StatusSeen]) -> asyncio.Future[None]:
        """Commit statuses seen, and failures before health (one transaction)."""
        now = self._clock()

        def step(row: StartRecord | None, item: StatusSeen) -> StartRecord:
            return _starts.seen(row, item, now)

        return self._start_write(project_id, seen, step, claims=False)

    def _start_write(
        self,
        project_id: str,
        items: Sequence[_starts.StartItem],
        step: Callable[[StartRecord | None, Any], StartRecord | None],
        *,
        claims: bool,
    ) -> asyncio.Future[Any]:
        """Read the rows of ``items``, apply ``step`` and write them back, in one transaction;
        the future gives the names changed when ``claims`` (else None). Queued by the call,
        like every write here; a claim stops waiting through an outage when the run stops."""
        names = _starts.start_names(items)

        def work(conn: sqlite3.Connection) -> set[str] | None:
            rows: dict[str, StartRecord | None] = {}
            for part, marks in _chunked(names):
                sql = _START_READ_SQL.format(marks=marks)
                for row in conn.execute(sql, (project_id, *part)):
                    rows[row[0]] = _starts.from_row(row[0], row[1:])
            changed: dict[str, StartRecord] = _starts.apply_steps(rows, items, step)
            conn.executemany(
                _START_WRITE_SQL,
                [(*_starts.to_values(new), project_id, name) for name, new in changed.items()],
            )
            return set(changed) if claims else None

        self._require_open()
        if self.read_only:
            raise LedgerError(f"ledger {self.path} is open read-only")
        return self._committer.submit_work(work, new_work=claims)

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
            raise ledger_error(self.path, "cannot open", exc) from exc
        try:
            await self._configure(conn)
        except BaseException as exc:
            await conn.close()
            if isinstance(exc, sqlite3.Error):
                raise ledger_error(self.path, "cannot open", exc) from exc
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
            raise schema_too_new(str(self.path), version, SCHEMA_VERSION)
        return version

    async def _read(self, sql: str, params: Sequence[Any]) -> list[sqlite3.Row]:
        # Reads work on a full disk, but they start new work: they wait while writes cannot.
        await self._outage.ready()
        conn = self._require_open()
        try:
            return list(await conn.execute_fetchall(sql, params))
        except READ_ERRORS as exc:
            raise ledger_error(self.path, "read failed", exc) from exc

    def _require_open(self) -> aiosqlite.Connection:
        if self._conn is None or self._committer.closing:
            raise LedgerError(f"ledger {self.path} is not open")
        return self._conn

    def _submit(
        self, kind: Literal["begin", "record"], key: tuple[str, str], params: tuple[Any, ...]
    ) -> asyncio.Future[Any]:
        self._require_open()
        if self.read_only:
            raise LedgerError(f"ledger {self.path} is open read-only")
        return self._committer.submit(kind, key, params)


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _chunked(names: Sequence[str]) -> Iterator[tuple[Sequence[str], str]]:
    """``names`` in slices of CHUNK, each with its ``?, ?, ...`` placeholders."""
    for chunk in chunks(names, CHUNK):
        yield chunk, ",".join("?" * len(chunk))


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
