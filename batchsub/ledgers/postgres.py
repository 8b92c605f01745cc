"""The PostgreSQL ledger: one shared table that several batchsub workers use at once.

Workers claim a job with an expiring lease: ``begin_attempt`` is one ``INSERT ... ON CONFLICT
DO UPDATE ... WHERE`` statement that only takes a row nobody holds or whose lease expired, so
two workers (or two deliveries of one job to a worker) never send the same job, and a job
whose worker died is taken over once its lease runs out. A ``created`` row is final: it is
never claimed again and no later state replaces it. Every call commits before it returns
(autocommit statements, ``synchronous_commit`` as the server sets it).

Fencing: the lease protects nothing once it has run out, so the claim handed back carries its
deadline on this process's monotonic clock, counted from before the claim was sent; the
submitter sends only while the claim covers the request (``Claim.covers``), else ``renew``s
it. Every claim bumps ``attempts``, which serves as the fencing token of the ledger's own
writes: ``renew`` and an outcome's ``record`` apply only while ``attempts`` is still the
claim's, so a worker frozen past its lease never overwrites the worker that took over. A
``created`` write always lands (the job exists, whoever says so), but keeps the first job_id
recorded and gives back that one when it carried another: two jobs of one name exist.

Leases are compared with the workers' own clocks: hosts must keep them in sync (NTP) to much
better than ``lease_seconds``. asyncpg and socket errors become ``LedgerError`` here, naming
the DSN with its password masked: ``LedgerUnavailable`` when the server cannot be reached now
(waited out through ``Outage``), ``LedgerRefusedError`` when it refuses a statement's values
(SQLSTATE classes 22, 23 and 54: a NUL byte, a value out of range, an index row too large),
which fails that job alone. Text from outside (sources, API error messages) is stored with
its control characters escaped, so it cannot be refused.

Every connection attempt, pool acquire and statement is bounded by a timeout; a connection
that timed out or broke is terminated, never handed out again, and the pool's other
connections are replaced too (after a restart they are all dead).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeAlias, TypeVar

import asyncpg
import structlog

from batchsub.errors import LedgerError, LedgerRefusedError, LedgerUnavailable, one_line
from batchsub.jobs import (
    IN_DOUBT_STATES,
    Claim,
    ErrorInfo,
    JobSpec,
    LedgerRecord,
    LedgerState,
)
from batchsub.ledgers._rows import (
    COLUMNS,
    MESSAGE_CHARS,
    PAGE_ORDER,
    READ_COLUMNS,
    OpenedInBlock,
    by_name,
    outcome_values,
    pages,
    schema_too_new,
    to_record,
)
from batchsub.ledgers._starts import STATES_CHECK
from batchsub.ledgers.outage import Outage
from batchsub.ledgers.postgres_starts import PostgresStarts
from batchsub.ledgers.postgres_updates import UPDATES_MIGRATION, PostgresUpdates
from batchsub.masking import mask_url, scrub, url_passwords
from batchsub.text import printable

log = structlog.get_logger(__name__)

_T = TypeVar("_T")
_Connection: TypeAlias = "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"  # generic in stubs

SCHEMA_VERSION = 3

# Held while the schema is created or migrated, so workers starting together take turns.
_SCHEMA_LOCK = int.from_bytes(b"batchsub", "big")

_META_SQL = """
CREATE TABLE IF NOT EXISTS batchsub_meta (key text PRIMARY KEY, value integer NOT NULL)
"""

# _MIGRATIONS[v] takes the schema from version v to v + 1 (0: an empty database).
# COLLATE "C": order by code point, as Python and the SQLite ledger do, whatever the locale.
_MIGRATIONS: dict[int, str] = {
    0: """
    CREATE TABLE batchsub_jobs (
        project_id    text COLLATE "C" NOT NULL,
        name          text COLLATE "C" NOT NULL,
        state         text    NOT NULL,
        job_id        bigint,
        attempts      integer NOT NULL,
        error_code    text,
        error_message text,
        http_status   integer,
        source        text COLLATE "C" NOT NULL,
        body_hash     text    NOT NULL,
        body          bytea   NOT NULL,
        adopted       boolean NOT NULL DEFAULT false,
        created_at    double precision NOT NULL,
        updated_at    double precision NOT NULL,
        owner         text,
        lease_until   double precision,
        PRIMARY KEY (project_id, name)
    );
    CREATE INDEX batchsub_jobs_by_state ON batchsub_jobs (project_id, state);
    CREATE INDEX batchsub_jobs_by_source ON batchsub_jobs (source, name, project_id);
    """,
    # Starting jobs (issue 15): each job's start state on its own row, NULL/0 on the rows
    # already there, which read as "never started" (``ledgers.memory`` has the table).
    1: f"""
    ALTER TABLE batchsub_jobs
        ADD COLUMN start_job_id bigint,
        ADD COLUMN start_state text CHECK (start_state IN {STATES_CHECK}),
        ADD COLUMN start_attempts integer NOT NULL DEFAULT 0,
        ADD COLUMN last_status text,
        ADD COLUMN status_seen_at double precision,
        ADD COLUMN start_error text,
        ADD COLUMN started_at double precision,
        ADD COLUMN running_at double precision,
        ADD COLUMN start_updated_at double precision,
        ADD COLUMN start_claim_until double precision;
    """,
    2: UPDATES_MIGRATION,  # updating jobs (issue 16): a table of its own, postgres_updates
}

# $1 project, $2 name, $3 source, $4 hash, $5 body, $6 now, $7 owner, $8 lease end.
# A live lease of our own is not taken again either: the same job delivered twice to this
# worker must not be sent twice. ``record`` releases it; a crash leaves it to expire.
_BEGIN_SQL = f"""
INSERT INTO batchsub_jobs AS j ({COLUMNS}, owner, lease_until)
VALUES ($1, $2, 'submitting', NULL, 1, NULL, NULL, NULL, $3, $4, $5, false, $6, $6, $7, $8)
ON CONFLICT (project_id, name) DO UPDATE SET
    state = 'submitting', attempts = j.attempts + 1, source = excluded.source,
    body_hash = excluded.body_hash, body = excluded.body, updated_at = excluded.updated_at,
    owner = excluded.owner, lease_until = excluded.lease_until
WHERE j.state <> 'created' AND (j.owner IS NULL OR j.lease_until < $6)
RETURNING attempts
"""

# $1 project, $2 name, $3 owner, $4 attempt, $5 lease end. A claim of ours nobody took over
# (attempts unchanged) may be extended even past its expiry: nobody else can have sent.
_RENEW_SQL = """
UPDATE batchsub_jobs SET lease_until = $5
WHERE project_id = $1 AND name = $2 AND owner = $3 AND attempts = $4 AND state = 'submitting'
RETURNING attempts
"""

# $1 project, $2 name, $3 state, $4 job_id, $5-$7 error, $8 source, $9 hash, $10 body,
# $11 adopted, $12 now, $13 owner, $14 the attempt this outcome comes from (or NULL).
# ``created`` lands whatever the claim (a fact), unless another job_id is recorded already;
# any other state only while nobody claimed the job since our claim ($14), or, for a write
# made without a claim, while nobody else holds a live lease.
_RECORD_SQL = f"""
INSERT INTO batchsub_jobs AS j ({COLUMNS}, owner, lease_until)
VALUES ($1, $2, $3, $4, 0, $5, $6, $7, $8, $9, $10, $11, $12, $12, NULL, NULL)
ON CONFLICT (project_id, name) DO UPDATE SET
    state = excluded.state, job_id = coalesce(excluded.job_id, j.job_id),
    error_code = excluded.error_code, error_message = excluded.error_message,
    http_status = excluded.http_status, adopted = excluded.adopted,
    updated_at = excluded.updated_at, owner = NULL, lease_until = NULL
WHERE CASE WHEN excluded.state = 'created' THEN
        j.state <> 'created' OR j.job_id IS NULL OR excluded.job_id IS NULL
        OR j.job_id = excluded.job_id
    ELSE j.state <> 'created' AND CASE WHEN $14::integer IS NOT NULL THEN j.attempts = $14
        ELSE j.owner IS NULL OR j.owner = $13 OR j.lease_until < $12 END
    END
RETURNING 1
"""

# What the driver and the network raise; converted to LedgerError at this one boundary.
_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)
_OPEN_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    *_DB_ERRORS,
)  # ValueError: a malformed DSN

# The server cannot be reached now, or cannot answer yet: the same statement may work later.
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable, a host name that does not resolve now
    TimeoutError,  # a connection attempt, acquire or statement past its timeout
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.InsufficientResourcesError,  # class 53: disk full, out of memory, too many clients
    asyncpg.CannotConnectNowError,  # 57P03: starting up or shutting down
    asyncpg.AdminShutdownError,  # 57P01: a fast shutdown or restart ended the session
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.QueryCanceledError,  # 57014: a statement cancelled on timeout
    asyncpg.ReadOnlySQLTransactionError,  # 25006: a standby, during a failover
    asyncpg.PostgresSystemError,  # class 58: an I/O error on the server
    asyncpg.InterfaceError,  # the connection closed under a statement or is unusable after one
    asyncpg.InternalClientError,
)
# SQLSTATE classes of a statement refused for the values it was given, not for an outage:
# data exception, integrity constraint violation, program limit exceeded.
_REFUSED_CLASSES = frozenset({"22", "23", "54"})

_CHUNK = 1000  # names per ``= ANY($2)``: keeps each statement and its answer small


def default_owner() -> str:
    """A worker identity unique across hosts, processes and ledgers: host:pid:random."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def owner_is_dead_here(owner: str) -> bool:
    """True when ``owner`` is a process of this host that no longer exists.

    Its lease then protects nothing, and waiting for it to expire only delays the job. Owners
    on other hosts, or whose pid is alive (or reused), are left to expire.
    """
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, but not ours to signal
        return False
    return False


_OWNER_SQL = "SELECT owner FROM batchsub_jobs WHERE project_id = $1 AND name = $2"
_KEPT_SQL = """
SELECT job_id FROM batchsub_jobs WHERE project_id = $1 AND name = $2 AND state = 'created'
"""
_EXPIRE_SQL = """
UPDATE batchsub_jobs SET lease_until = 0
WHERE project_id = $1 AND name = $2 AND owner = $3 AND state <> 'created'
"""


class PostgresLedger(PostgresStarts, PostgresUpdates, OpenedInBlock):
    """A ``Ledger`` in a PostgreSQL database, shared by workers that claim jobs with leases.

    ``owner`` names this worker in the rows it holds; a claim lasts ``lease_seconds`` after
    ``begin_attempt`` unless ``record`` releases it sooner. ``clock`` gives epoch seconds for
    timestamps and leases (tests share a fake one between ledgers); ``monotonic`` the clock
    of the claims' deadlines, which this process alone compares. ``outage`` decides how long
    a call waits for an unreachable server (by default: not at all).
    """

    def __init__(
        self,
        dsn: str,
        *,
        owner: str | None = None,
        lease_seconds: float = 120.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        pool_size: int = 10,
        connect_timeout: float = 10.0,
        command_timeout: float = 10.0,
        page_size: int = 500,
        outage: Outage | None = None,
    ) -> None:
        self.dsn = mask_url(dsn)  # safe to print
        self.owner = owner if owner is not None else default_owner()
        self._dsn = dsn
        self._lease = lease_seconds
        self._clock = clock
        self._monotonic = monotonic
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._timeout = command_timeout  # each acquire and statement
        self._page_size = page_size
        # Without one given, an unreachable server fails each call at once (no waiting).
        self._outage = outage or Outage()
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None

    def __repr__(self) -> str:
        return f"PostgresLedger({self.dsn!r}, owner={self.owner!r})"

    async def open(self) -> None:
        """Connect the pool and create or migrate the schema (one worker at a time).

        An unreachable server is waited for as long as the outage's ``startup_limit`` says.
        """
        if self._pool is not None:
            return
        self._outage.reopen()
        self._pool = await self._outage.run(self._connect, new_work=False, startup=True)

    async def _connect(self) -> asyncpg.Pool[asyncpg.Record]:
        try:
            # min_size 0: connections are made as statements need them. With a floor, the pool
            # reconnects by itself in the background after an outage, logging tracebacks.
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=0,
                max_size=self._pool_size,
                timeout=self._connect_timeout,
                command_timeout=self._timeout,
                server_settings={"application_name": "batchsub"},
            )
        except _OPEN_ERRORS as exc:
            raise self._error("cannot connect", exc) from exc
        try:
            await self._migrate(pool)  # its first connection is made here
        except BaseException as exc:
            pool.terminate()
            if isinstance(exc, _OPEN_ERRORS):
                what = "cannot connect" if _is_unavailable(exc) else "cannot create the schema"
                raise self._error(what, exc) from exc
            raise
        return pool

    async def close(self) -> None:
        """Close the pool; calling it again does nothing. Every write is already committed.

        Calls still waiting through an outage give up. A server that does not answer the
        goodbye in time gets its connections dropped, which loses nothing.
        """
        pool, self._pool = self._pool, None
        self._outage.close()
        if pool is None:
            return
        try:
            async with asyncio.timeout(self._timeout):
                await pool.close()
        except _DB_ERRORS as exc:
            pool.terminate()
            error = self._error("cannot close", exc)
            if not isinstance(error, LedgerUnavailable):
                raise error from exc
            log.warning("ledger.close_failed", ledger=self.dsn, error=error.reason)

    async def get_many(self, project_id: str, names: Sequence[str]) -> dict[str, LedgerRecord]:
        """The records of those names that exist, one query per 1000 names."""
        sql = (
            f"SELECT {READ_COLUMNS} FROM batchsub_jobs"
            " WHERE project_id = $1 AND name = ANY($2::text[])"
        )

        async def fetch(chunk: Sequence[str]) -> list[asyncpg.Record]:
            return await self._fetch(sql, project_id, list(chunk))

        return await by_name(names, _CHUNK, fetch)

    def begin_attempt(self, project_id: str, job: JobSpec) -> asyncio.Future[Claim | None]:
        """Claim ``job`` (a write the caller cannot abort: see ``_detached``)."""
        return _detached(self._begin_attempt(project_id, job))

    async def _begin_attempt(self, project_id: str, job: JobSpec) -> Claim | None:
        """Claim ``job`` (state submitting, attempts + 1, a fresh lease) and return the claim.

        Returns None, changing nothing, when the job is ``created`` already or under a live
        lease (another worker's, or ours: the same job twice in flight here); the caller
        re-reads the record to learn which. A lease ends at ``record`` or on expiry.
        """
        for _ in range(2):
            tries = 0
            started = 0.0

            def claim(conn: _Connection) -> Awaitable[Any]:
                nonlocal tries, started
                tries += 1
                # Before the statement: a slow answer only shortens the claim's deadline.
                started = self._monotonic()
                now = float(self._clock())
                return conn.fetchval(
                    _BEGIN_SQL,
                    *(project_id, job.name, printable(job.source), job.body_hash, job.body),
                    *(now, self.owner, now + self._lease),
                )

            value = await self._statement("write failed", claim)
            if value is not None:
                return Claim(int(value), started + self._lease)
            holder = await self._fetchval(_OWNER_SQL, project_id, job.name)
            if holder == self.owner and tries > 1:
                # A try whose answer was lost (a timeout, a reset) committed our claim all
                # the same. Nothing was sent under it: a request leaves only after this returns.
                log.info("ledger.claim_answer_lost", name=job.name, owner=holder)
            elif not isinstance(holder, str) or not owner_is_dead_here(holder):
                return None
            else:
                # A worker on this host was killed holding the job: end its lease now.
                log.info("ledger.lease_of_dead_worker", name=job.name, owner=holder)
            await self._fetchval(_EXPIRE_SQL, project_id, job.name, holder)
        return None

    def renew(self, project_id: str, job: JobSpec, claim: Claim) -> asyncio.Future[Claim | None]:
        """Extend our claim on ``job`` (a write the caller cannot abort: see ``_detached``)."""
        return _detached(self._renew(project_id, job, claim))

    async def _renew(self, project_id: str, job: JobSpec, claim: Claim) -> Claim | None:
        """Extend our claim on ``job`` to a full lease from now; None if it is no longer ours."""
        started = 0.0

        def extend(conn: _Connection) -> Awaitable[Any]:
            nonlocal started
            started = self._monotonic()  # per try, as in ``begin_attempt``
            lease_until = float(self._clock()) + self._lease
            return conn.fetchval(
                _RENEW_SQL, project_id, job.name, self.owner, claim.attempt, lease_until
            )

        if await self._statement("write failed", extend) is None:
            return None
        return Claim(claim.attempt, started + self._lease)

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
        """Commit a state and release the lease; keeps a known job_id when given None.

        The write is skipped (and logged) when the row is ``created`` and ``state`` is not,
        or when another worker claimed the job since ``attempt`` (without ``attempt``: when
        another worker holds a live lease on it): a late answer of a worker that lost its
        lease must not undo the one that took over. Recording ``created`` always applies (a
        job that exists is a fact, whoever found it), except over another job_id: the first
        one recorded is kept and given back. A write the caller cannot abort (``_detached``).
        """
        now = float(self._clock())
        values = (project_id, job.name, str(state), job_id, *outcome_values(job, error))
        values += (adopted, now, self.owner, attempt)
        return _detached(self._record(project_id, job.name, state, values))

    async def _record(
        self, project_id: str, name: str, state: LedgerState, values: tuple[Any, ...]
    ) -> int | None:
        # An outcome is waited for through an outage, even when the run stops: the API gave it.
        applied = await self._fetchval(_RECORD_SQL, *values, new_work=False)
        if applied is not None:
            return None
        if state is LedgerState.CREATED:  # skipped: another job_id was recorded first
            kept = await self._fetchval(_KEPT_SQL, project_id, name)
            return int(kept) if kept is not None else None
        log.warning("ledger.record_skipped", name=name, state=str(state), owner=self.owner)
        return None

    async def in_doubt(self, project_id: str) -> list[LedgerRecord]:
        """Records in ``submitting`` or ``unknown``: a request may have created these jobs.

        A ``submitting`` row under another worker's live lease is left out: it is not in
        doubt but in flight, and that worker will record its outcome (or its lease expires).
        """
        rows = await self._fetch(
            f"SELECT {READ_COLUMNS} FROM batchsub_jobs WHERE project_id = $1"
            " AND state = ANY($2::text[])"
            " AND NOT (state = 'submitting' AND owner IS NOT NULL AND owner <> $3"
            " AND lease_until >= $4)"
            " ORDER BY source, name",
            project_id,
            sorted(str(s) for s in IN_DOUBT_STATES),
            self.owner,
            float(self._clock()),
        )
        return [to_record(row) for row in rows]

    async def records(self, project_id: str | None = None) -> AsyncIterator[LedgerRecord]:
        """Every record (of one project, or all) by source then name, a page at a time.

        Keyset paging: no connection or transaction is held between pages.
        """

        async def fetch(after: tuple[Any, ...] | None) -> list[asyncpg.Record]:
            clauses = ["($1::text IS NULL OR project_id = $1)"]
            if after is not None:
                clauses.append("(source, name, project_id) > ($2, $3, $4)")
            return await self._fetch(
                f"SELECT {READ_COLUMNS} FROM batchsub_jobs WHERE {' AND '.join(clauses)}"
                f" {PAGE_ORDER} LIMIT {int(self._page_size)}",
                project_id,
                *(after or ()),
            )

        async for record in pages(self._page_size, fetch):
            yield record

    # --- internals -------------------------------------------------------------------------

    def _detach(self, write: Awaitable[_T]) -> asyncio.Future[_T]:
        return _detached(write)

    async def _migrate(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            await conn.execute(_META_SQL)
            found = await conn.fetchval(
                "SELECT value FROM batchsub_meta WHERE key = 'schema_version'"
            )
            version = int(found or 0)
            if version > SCHEMA_VERSION:
                raise schema_too_new(self.dsn, version, SCHEMA_VERSION)
            if version == SCHEMA_VERSION:
                return
            while version < SCHEMA_VERSION:
                await conn.execute(_MIGRATIONS[version])
                version += 1
            await conn.execute(
                "INSERT INTO batchsub_meta (key, value) VALUES ('schema_version', $1)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                version,
            )

    def _require_pool(self) -> asyncpg.Pool[asyncpg.Record]:
        if self._pool is None:
            raise LedgerError(f"ledger {self.dsn} is not open")
        return self._pool

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        rows: list[asyncpg.Record] = await self._statement(
            "read failed", lambda conn: conn.fetch(sql, *args)
        )
        return rows

    async def _fetchval(self, sql: str, *args: Any, new_work: bool = True) -> Any:
        return await self._statement(
            "write failed", lambda conn: conn.fetchval(sql, *args), new_work=new_work
        )

    async def _statement(
        self,
        what: str,
        statement: Callable[[_Connection], Awaitable[_T]],
        *,
        new_work: bool = True,
    ) -> _T:
        """Run ``statement`` on a pooled connection, waiting through an outage (``Outage``)."""
        return await self._outage.run(lambda: self._once(what, statement), new_work=new_work)

    async def _once(self, what: str, statement: Callable[[_Connection], Awaitable[_T]]) -> _T:
        pool = self._require_pool()
        try:
            async with pool.acquire(timeout=self._timeout) as conn:
                try:
                    return await statement(conn)
                except _DB_ERRORS as exc:
                    if _is_unavailable(exc):
                        # Timed out or broken: its state is unknown, so it is never reused.
                        # (One the server closed is back in the pool already, closed.)
                        with contextlib.suppress(asyncpg.InterfaceError):
                            conn.terminate()
                    raise
        except _DB_ERRORS as exc:
            error = self._error(what, exc)
            if isinstance(error, LedgerUnavailable):
                await pool.expire_connections()  # a restart killed the idle ones too
            raise error from exc

    def _error(self, what: str, exc: BaseException) -> LedgerError:
        """One line naming the masked DSN; the password is scrubbed should the cause echo it."""
        if isinstance(exc, TimeoutError):
            message = f"timed out after {self._timeout:g} s"
        else:
            message = one_line(exc)
        message = printable(scrub(message, url_passwords(self._dsn)), MESSAGE_CHARS)
        if _is_refused(exc):
            return LedgerRefusedError(f"ledger {self.dsn}: {what}: {message}")
        if _is_unavailable(exc):
            return LedgerUnavailable(self.dsn, f"{what}: {message}")
        return LedgerError(f"ledger {self.dsn}: {what}: {message}")


def _detached(write: Awaitable[_T]) -> asyncio.Future[_T]:
    """``write`` run as a task of its own; the future given back is a shield of it.

    The Ledger protocol: a cancelled caller (a run stopping) must not abort a write under
    way, and still gets its cancellation.
    """
    return asyncio.shield(asyncio.ensure_future(write))


def _is_refused(exc: BaseException) -> bool:
    """True when the server refuses the values of the statement (``_REFUSED_CLASSES``)."""
    sqlstate = getattr(exc, "sqlstate", None)
    return (
        isinstance(exc, asyncpg.PostgresError)
        and isinstance(sqlstate, str)
        and sqlstate[:2] in _REFUSED_CLASSES
    )


def _is_unavailable(exc: BaseException) -> bool:
    """True for a failure of the connection or the server, not of the statement."""
    if _is_refused(exc) or isinstance(exc, ValueError):
        return False  # a bad value, or a malformed DSN or option: waiting will not help
    return isinstance(exc, _UNAVAILABLE)
