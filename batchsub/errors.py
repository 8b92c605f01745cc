"""The exception tree of batchsub. Every error the product raises on purpose is one of these.

BatchsubError
 +-- ConfigError          a setting is missing or wrong; the CLI exits 2 with one line
 +-- ManifestError        a manifest file or job cannot be used (names the file and field)
 +-- OutputError          a file the user named (a report) cannot be written; exit 2
 +-- LedgerError          the ledger cannot be opened, locked or written (stop: a setting or a bug)
 |    +-- LedgerLockedError   another batchsub process holds the ledger
 |    +-- LedgerRefusedError  the ledger refuses one job's values (not an outage: fail that job)
 |    +-- LedgerUnavailable   unreachable or unwritable for now (connection refused or reset,
 |                            timed out, restarting, disk full): wait and retry the same call
 +-- ApiError             the API answered with an error or could not be reached
      +-- FatalApiError       stop the whole run (401/403: a wrong credential or project)
      +-- RetryableError      try again later; ``defer`` says how long at least
                              (``code`` CONNECT_FAILED: no connection could be made;
                              UNREADABLE: an answer that is not the API's, such as a
                              proxy's page instead of a job list)

aiohttp errors are turned into ApiError in ``batchsub.client`` (what each answer means is
``batchsub.answers``), sqlite3/aiosqlite errors into the LedgerError classes in
``batchsub.ledgers.sqlite_commit`` and asyncpg's in ``batchsub.ledgers.postgres``; nothing
else catches library exceptions. ``one_line`` words any exception for a person.
"""

from __future__ import annotations

CONNECT_FAILED = "CONNECT"  # RetryableError code: no connection could be made at all
UNREADABLE = "UNREADABLE"  # RetryableError code: a list answer that is not a job list


class BatchsubError(Exception):
    """Root of every error batchsub raises on purpose."""


class ConfigError(BatchsubError):
    """A setting is missing or invalid; the message says which one and how to fix it."""


class ManifestError(BatchsubError):
    """A manifest cannot be read, parsed or validated."""


class OutputError(BatchsubError):
    """A file the user asked for (``--report``, ``--output``) cannot be written; names it."""


class LedgerError(BatchsubError):
    """The ledger cannot be opened or written."""


class LedgerLockedError(LedgerError):
    """Another batchsub process is using this ledger."""


class LedgerRefusedError(LedgerError):
    """The ledger refuses a value of one job (a data error): that job fails, the others go on.

    Retrying cannot help, unlike an outage; the job is failed (or dead-lettered) with this
    message as its reason.
    """


class LedgerUnavailable(LedgerError):
    """The ledger cannot be reached or written now; the same statement may succeed later.

    ``ledger`` names it (a file, or a DSN with its password masked), ``reason`` says what
    failed, ``condition`` how to say it ("unreachable", "unwritable") after a long outage;
    ``message`` replaces the default "ledger NAME: REASON".
    """

    def __init__(
        self, ledger: str, reason: str, *, condition: str = "unreachable", message: str = ""
    ) -> None:
        super().__init__(message or f"ledger {ledger}: {reason}")
        self.ledger = ledger
        self.reason = reason
        self.condition = condition


class ApiError(BatchsubError):
    """The API answered with an error, or the request did not get an answer."""

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class FatalApiError(ApiError):
    """An answer that makes every further request pointless (bad credential, wrong project)."""


class RetryableError(ApiError):
    """A transient failure; ``defer`` is the least time to wait before trying again."""

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        status: int | None = None,
        defer: float | None = None,
    ) -> None:
        super().__init__(message, code=code, status=status)
        self.defer = defer


def one_line(exc: BaseException) -> str:
    """Why ``exc`` happened, on one line: an OS error's few words ("No such file or
    directory"), else its text with line breaks folded, else what kind of error it is. A
    group (a TaskGroup's, anyio's) is told by its first error: its own text says nothing."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = " ".join(str(exc).split())
    if not text and isinstance(exc, TimeoutError):
        return "timed out"
    return text or type(exc).__name__
