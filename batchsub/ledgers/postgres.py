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
the DSN with its password masked; a data error of one job's values (SQLSTATE classes 22, 23
and 54: a NUL byte, a value out of range, an index row too large) is a
``LedgerRefusedError``, which fails that job alone. Text from outside (sources, API error
messages) is stored with its control characters escaped, so it cannot be refused.
"""

from __future__ import annotations

import os
import re
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import structlog

from batchsub.errors import LedgerError, LedgerRefusedError
from batchsub.jobs import IN_DOUBT_STATES, Claim, ErrorInfo, JobSpec, LedgerRecord, LedgerState
from batchsub.text import printable

log = structlog.get_logger(__name__)

SCHEMA_VERSION = 1

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
}

_COLUMNS = (
    "project_id, name, state, job_id, attempts, error_code, error_message, http_status,"
    " source, body_hash, body, adopted, created_at, updated_at"
)

# $1 project, $2 name, $3 source, $4 hash, $5 body, $6 now, $7 owner, $8 lease end.
# A live lease of our own is not taken again either: the same job delivered twice to this
# worker must not be sent twice. ``record`` releases it; a crash leaves it to expire.
_BEGIN_SQL = f"""
INSERT INTO batchsub_jobs AS j ({_COLUMNS}, owner, lease_until)
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
INSERT INTO batchsub_jobs AS j ({_COLUMNS}, owner, lease_until)
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

_CHUNK = 1000  # names per ``= ANY($2)``: keeps each statement and its answer small
# SQLSTATE classes of a statement refused for the values it was given, not for an outage:
# data exception, integrity constraint violation, program limit exceeded.
_REFUSED_CLASSES = frozenset({"22", "23", "54"})
_MESSAGE_CHARS = 2000  # an error message longer than this is cut when stored

_PASSWORD_PARAM = re.compile(r"(?i)(password=)[^&\s]*")


def mask_dsn(dsn: str) -> str:
    """``dsn`` with its password (in the user part or a ``password=`` parameter) as ``***``."""
    masked = _PASSWORD_PARAM.sub(r"\1***", dsn)
    try:
        parts = urlsplit(masked)
        password = parts.password
    except ValueError:
        return masked
    if password is None:
        return masked
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    return parts._replace(netloc=f"{user}:***@{hostinfo}").geturl()


def _passwords(dsn: str) -> list[str]:
    """Every password written in ``dsn``, to scrub from messages that might echo it."""
    found = [m.group(0).partition("=")[2] for m in _PASSWORD_PARAM.finditer(dsn)]
    try:
        parts = urlsplit(dsn)
        found.append(parts.password or "")
        found.extend(v for k, v in parse_qsl(parts.query) if k.lower() == "password")
    except ValueError:
        pass
    return [p for p in found if p]


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


class PostgresLedger:
    """A ``Ledger`` in a PostgreSQL database, shared by workers that claim jobs with leases.

    ``owner`` names this worker in the rows it holds; a claim lasts ``lease_seconds`` after
    ``begin_attempt`` unless ``record`` releases it sooner. ``clock`` gives epoch seconds for
    timestamps and leases (tests share a fake one between ledgers); ``monotonic`` the clock
    of the claims' deadlines, which this process alone compares.
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
        page_size: int = 500,
    ) -> None:
        self.dsn = mask_dsn(dsn)  # safe to print
        self.owner = owner if owner is not None else default_owner()
        self._dsn = dsn
        self._lease = lease_seconds
        self._clock = clock
        self._monotonic = monotonic
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._page_size = page_size
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None

    def __repr__(self) -> str:
        return f"PostgresLedger({self.dsn!r}, owner={self.owner!r})"

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
        """Connect the pool and create or migrate the schema (one worker at a time)."""
        if self._pool is not None:
            return
        try:
            pool = await asyncpg.create_pool(
                self._dsn,
                min_size=1,
                max_size=self._pool_size,
                timeout=self._connect_timeout,
                server_settings={"application_name": "batchsub"},
            )
        except _OPEN_ERRORS as exc:
            raise self._error("cannot connect", exc) from exc
        try:
            await self._migrate(pool)
        except BaseException as exc:
            pool.terminate()
            if isinstance(exc, _DB_ERRORS):
                raise self._error("cannot create the schema", exc) from exc
            raise
        self._pool = pool

    async def close(self) -> None:
        """Close the pool; calling it again does nothing. Every write is already committed."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await pool.close()
        except _DB_ERRORS as exc:
            pool.terminate()
            raise self._error("cannot close", exc) from exc

    async def get_many(self, project_id: str, names: Sequence[str]) -> dict[str, LedgerRecord]:
        """The records of those names that exist, one query per 1000 names."""
        unique = list(dict.fromkeys(names))
        found: dict[str, LedgerRecord] = {}
        for start in range(0, len(unique), _CHUNK):
            rows = await self._fetch(
                f"SELECT {_COLUMNS} FROM batchsub_jobs"
                " WHERE project_id = $1 AND name = ANY($2::text[])",
                project_id,
                unique[start : start + _CHUNK],
            )
            found.update((rec.name, rec) for rec in map(_to_record, rows))
        return found

    async def begin_attempt(self, project_id: str, job: JobSpec) -> Claim | None:
        """Claim ``job`` (state submitting, attempts + 1, a fresh lease) and return the claim.

        Returns None, changing nothing, when the job is ``created`` already or under a live
        lease (another worker's, or ours: the same job twice in flight here); the caller
        re-reads the record to learn which. A lease ends at ``record`` or on expiry.
        """
        for _ in range(2):
            started = self._monotonic()  # before the statement: a slow answer only shortens it
            now = float(self._clock())
            value = await self._fetchval(
                _BEGIN_SQL,
                project_id,
                job.name,
                printable(job.source),
                job.body_hash,
                job.body,
                now,
                self.owner,
                now + self._lease,
            )
            if value is not None:
                return Claim(int(value), started + self._lease)
            holder = await self._fetchval(_OWNER_SQL, project_id, job.name)
            if not isinstance(holder, str) or not owner_is_dead_here(holder):
                return None
            # A worker on this host was killed holding the job: end its lease now.
            log.info("ledger.lease_of_dead_worker", name=job.name, owner=holder)
            await self._fetchval(_EXPIRE_SQL, project_id, job.name, holder)
        return None

    async def renew(self, project_id: str, job: JobSpec, claim: Claim) -> Claim | None:
        """Extend our claim on ``job`` to a full lease from now; None if it is no longer ours."""
        started = self._monotonic()
        value = await self._fetchval(
            _RENEW_SQL,
            project_id,
            job.name,
            self.owner,
            claim.attempt,
            float(self._clock()) + self._lease,
        )
        if value is None:
            return None
        return Claim(claim.attempt, started + self._lease)

    async def record(
        self,
        project_id: str,
        job: JobSpec,
        state: LedgerState,
        *,
        job_id: int | None = None,
        error: ErrorInfo | None = None,
        adopted: bool = False,
        attempt: int | None = None,
    ) -> int | None:
        """Commit a state and release the lease; keeps a known job_id when given None.

        The write is skipped (and logged) when the row is ``created`` and ``state`` is not,
        or when another worker claimed the job since ``attempt`` (without ``attempt``: when
        another worker holds a live lease on it): a late answer of a worker that lost its
        lease must not undo the one that took over. Recording ``created`` always applies (a
        job that exists is a fact, whoever found it), except over another job_id: the first
        one recorded is kept and given back.
        """
        now = float(self._clock())
        applied = await self._fetchval(
            _RECORD_SQL,
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
            adopted,
            now,
            self.owner,
            attempt,
        )
        if applied is not None:
            return None
        if state is LedgerState.CREATED:  # skipped: another job_id was recorded first
            kept = await self._fetchval(_KEPT_SQL, project_id, job.name)
            return int(kept) if kept is not None else None
        log.warning("ledger.record_skipped", name=job.name, state=str(state), owner=self.owner)
        return None

    async def in_doubt(self, project_id: str) -> list[LedgerRecord]:
        """Records in ``submitting`` or ``unknown``: a request may have created these jobs.

        A ``submitting`` row under another worker's live lease is left out: it is not in
        doubt but in flight, and that worker will record its outcome (or its lease expires).
        """
        rows = await self._fetch(
            f"SELECT {_COLUMNS} FROM batchsub_jobs WHERE project_id = $1"
            " AND state = ANY($2::text[])"
            " AND NOT (state = 'submitting' AND owner IS NOT NULL AND owner <> $3"
            " AND lease_until >= $4)"
            " ORDER BY source, name",
            project_id,
            sorted(str(s) for s in IN_DOUBT_STATES),
            self.owner,
            float(self._clock()),
        )
        return [_to_record(row) for row in rows]

    async def records(self, project_id: str | None = None) -> AsyncIterator[LedgerRecord]:
        """Every record (of one project, or all) by source then name, a page at a time.

        Keyset paging: no connection or transaction is held between pages.
        """
        after: tuple[str, str, str] | None = None
        while True:
            clauses = ["($1::text IS NULL OR project_id = $1)"]
            params: list[Any] = [project_id]
            if after is not None:
                clauses.append("(source, name, project_id) > ($2, $3, $4)")
                params.extend(after)
            rows = await self._fetch(
                f"SELECT {_COLUMNS} FROM batchsub_jobs WHERE {' AND '.join(clauses)}"
                f" ORDER BY source, name, project_id LIMIT {int(self._page_size)}",
                *params,
            )
            for rec in map(_to_record, rows):
                yield rec
            if len(rows) < self._page_size:
                return
            last = rows[-1]
            after = (last["source"], last["name"], last["project_id"])

    # --- internals -------------------------------------------------------------------------

    async def _migrate(self, pool: asyncpg.Pool[asyncpg.Record]) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _SCHEMA_LOCK)
            await conn.execute(_META_SQL)
            found = await conn.fetchval(
                "SELECT value FROM batchsub_meta WHERE key = 'schema_version'"
            )
            version = int(found or 0)
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"ledger {self.dsn} has schema version {version}, newer than this "
                    f"batchsub supports ({SCHEMA_VERSION}); upgrade batchsub"
                )
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
        pool = self._require_pool()
        try:
            return await pool.fetch(sql, *args)
        except _DB_ERRORS as exc:
            raise self._error("read failed", exc) from exc

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        pool = self._require_pool()
        try:
            return await pool.fetchval(sql, *args)
        except _DB_ERRORS as exc:
            raise self._error("write failed", exc) from exc

    def _error(self, what: str, exc: BaseException) -> LedgerError:
        """One line naming the masked DSN; the password is scrubbed should the cause echo it.

        A refusal of the values given (``_REFUSED_CLASSES``) is a ``LedgerRefusedError``.
        """
        message = printable(" ".join(str(exc).split()) or type(exc).__name__, _MESSAGE_CHARS)
        for password in _passwords(self._dsn):
            message = message.replace(password, "***")
        sqlstate = getattr(exc, "sqlstate", None)
        refused = (
            isinstance(exc, asyncpg.PostgresError)
            and isinstance(sqlstate, str)
            and sqlstate[:2] in _REFUSED_CLASSES
        )
        kind = LedgerRefusedError if refused else LedgerError
        return kind(f"ledger {self.dsn}: {what}: {message}")


def _to_record(row: asyncpg.Record) -> LedgerRecord:
    message = row["error_message"]
    error = (
        None
        if message is None
        else ErrorInfo(message=message, code=row["error_code"], http_status=row["http_status"])
    )
    return LedgerRecord(
        project_id=row["project_id"],
        name=row["name"],
        state=LedgerState(row["state"]),
        job_id=row["job_id"],
        attempts=row["attempts"],
        error=error,
        source=row["source"],
        body_hash=row["body_hash"],
        body=bytes(row["body"]),
        adopted=row["adopted"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
    )
