"""The swappable parts of batchsub. Implementations depend on these, never on each other."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from datetime import datetime
from typing import Protocol, runtime_checkable

from yarl import URL

from batchsub.jobs import (
    Claim,
    ErrorInfo,
    JobResult,
    JobSpec,
    LedgerRecord,
    LedgerState,
    ManifestItem,
    RememberedJob,
    StartIntent,
    StartOutcome,
    StartRecord,
    StatusSeen,
    UpdateRecord,
    UpdateStep,
)


class Source(Protocol):
    """Where manifests come from: a directory, a drop folder, a message queue."""

    def items(self) -> AsyncIterator[ManifestItem]:
        """Yield jobs and invalid manifests, streamed: memory must not grow with their number."""
        ...

    async def finish(self, item: ManifestItem, result: JobResult) -> None:
        """Told once per item, after its outcome is committed (ack a message, move a file)."""
        ...


class Ledger(Protocol):
    """The durable record of every job's state, keyed by (project_id, name).

    A write (``begin_attempt``, ``renew``, ``record``) returns a future of its result, and is
    under way when the call returns: it is made whatever happens to its caller (cancelling
    the future, or the task awaiting it, does not undo it), and it is durable when the future
    is done. So an outcome the API gave reaches the ledger even while its run is cancelled,
    and the cancellation still reaches the caller. The submitter commits ``submitting``
    before a request leaves, so a crash never loses a job.
    """

    async def open(self) -> None:
        """Create or migrate the schema and take whatever lock the backend needs."""
        ...

    async def close(self) -> None:
        """Flush pending writes and release the ledger."""
        ...

    async def get_many(self, project_id: str, names: Sequence[str]) -> dict[str, LedgerRecord]:
        """The records of those names that exist (one round trip, for batches of names)."""
        ...

    def begin_attempt(self, project_id: str, job: JobSpec) -> asyncio.Future[Claim | None]:
        """Record the intent to send ``job`` (state submitting, attempts + 1).

        The claim (the attempt number, and the monotonic deadline of the hold), or None when
        another live worker holds the job or it is created.
        """
        ...

    def renew(self, project_id: str, job: JobSpec, claim: Claim) -> asyncio.Future[Claim | None]:
        """Extend ``claim`` from now, only while it is still this worker's; None if it is not.

        A claim is still ours when nobody claimed the job since (its attempt number is
        unchanged) and no outcome released it.
        """
        ...

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
        """Record a state (insert the row if absent), releasing any claim.

        ``attempt``: the claim this outcome comes from; the write is skipped when another
        worker claimed the job since. ``created`` is a fact and always lands, but never
        replaces a job_id recorded first: when it carries another, the call gives back the
        job_id kept (two jobs of that name exist). None otherwise.
        """
        ...

    async def in_doubt(self, project_id: str) -> list[LedgerRecord]:
        """Records in ``submitting`` or ``unknown``: a request may have created them."""
        ...

    def records(self, project_id: str | None = None) -> AsyncIterator[LedgerRecord]:
        """Every record (of one project, or all), ordered by source then name."""
        ...


class StartLedger(Protocol):
    """The ledger side of starting jobs, recorded on each job's own row (``start_state``).

    The state machine (NULL: batchsub has not started this job)::

        NULL / start_failed --begin_start--> starting          intent committed before the run call
        starting --record_start(started)--> started            DLI took it, or its status says so
        starting --record_start(start_failed)--> start_failed  refused for good, or the job is gone
        starting --record_start(None)--> NULL                  known not started: nothing in flight
        starting / started --record_status(failure)--> start_failed  failed before it was healthy

    ``begin_start`` is a compare-and-set on ``start_attempts`` (the attempts the decision
    read): two workers that read the same row claim it once between them. A row left
    ``starting`` (a lost answer, a crash) is reconciled from the job's status before anything
    is sent again. Every write is durable when its awaitable completes.
    """

    async def start_records(self, project_id: str, names: Sequence[str]) -> dict[str, StartRecord]:
        """The start records of those names that have one (one round trip)."""
        ...

    def begin_start(self, project_id: str, intents: Sequence[StartIntent]) -> Awaitable[set[str]]:
        """Commit the intents (state starting, attempts + 1); the names claimed.

        A name is not claimed when its attempts moved since they were read, or (shared
        ledgers) another live worker holds it in ``starting``.
        """
        ...

    def record_start(self, project_id: str, outcomes: Sequence[StartOutcome]) -> Awaitable[None]:
        """Commit start outcomes, releasing the claims."""
        ...

    def record_status(self, project_id: str, seen: Sequence[StatusSeen]) -> Awaitable[None]:
        """Commit statuses seen (and failures before health), as the state machine says."""
        ...


class UpdateLedger(Protocol):
    """The ledger side of updating jobs (``batchsub apply``), one row per (project_id, name).

    The state machine (``jobs.UpdateState``)::

        (none) / done / failed --begin_update--> planned   intent and target body committed
        planned --> stopping --> stopped                   restart: stop (savepoint), seen stopped
        planned / stopped --> updating --> updated         the PUT, confirmed by answer or detail
        updated --> restarting --> done                    restart: run (resume), DLI took it
        updated --> done                                   in place, or a job not running
        any --> failed                                     given up (the error says why)

    Every state is committed before the call it names leaves (``stopping``, ``updating``,
    ``restarting``), so a crash leaves a row that says which call may be in flight; a rerun
    reads the job's status or detail before it sends that call again. ``done`` is committed
    with the body the job now holds: SQL ledgers also make it the jobs row's body, the body
    batchsub last created or updated the job with. Writes are durable when they complete.
    """

    async def update_records(
        self, project_id: str, names: Sequence[str] | None = None
    ) -> dict[str, UpdateRecord]:
        """The update records of those names (None: every unfinished one), by name."""
        ...

    def begin_update(
        self, project_id: str, intents: Sequence[UpdateRecord]
    ) -> Awaitable[set[str]]:
        """Commit new intents (state ``planned``); the names claimed.

        A name is not claimed when it has an unfinished update already: that one is finished
        first (it is in the ``update_records`` a rerun reads).
        """
        ...

    def record_update(self, project_id: str, steps: Sequence[UpdateStep]) -> Awaitable[None]:
        """Commit steps; ``done`` also records the body as the job's (see the class docstring)."""
        ...

    def claim_updates(self, project_id: str, names: Sequence[str]) -> Awaitable[set[str]]:
        """Claim unfinished updates to resume them; the names claimed. A shared ledger gives
        each a lease (renewed by every step) and refuses a name another live worker holds;
        a one-writer ledger claims every unfinished one."""
        ...

    def forget_missing(
        self, project_id: str, jobs: Sequence[tuple[str, int]]
    ) -> Awaitable[set[str]]:
        """(name, job_id) of created jobs seen deleted on the server: their jobs rows go back
        to ``retrying`` (known not to exist), so the create path creates them again
        (``apply --recreate-missing``). Only a row still ``created`` with that job_id moves;
        the names moved."""
        ...


@runtime_checkable
class FileIndex(Protocol):
    """What a ledger remembers of manifest files, so that a rerun need not read them again.

    A file is remembered by a fingerprint of its metadata (size, mtime, ctime, inode) once
    every job in it exists; it is trusted only while that fingerprint is unchanged and its
    jobs are still ``created``.
    """

    async def remembered_files(
        self, project_id: str, fingerprints: Mapping[str, str]
    ) -> dict[str, list[RememberedJob]]:
        """For each path whose fingerprint matches and whose jobs all exist: those jobs."""
        ...

    async def remember_files(
        self, project_id: str, files: Sequence[tuple[str, str, Sequence[str]]]
    ) -> None:
        """Record (path, fingerprint, job names) of files whose every job exists."""
        ...


class Auth(Protocol):
    """Adds the authentication headers to one request."""

    def headers(self, method: str, url: URL, body: bytes) -> Mapping[str, str]:
        """The headers to send with this exact request (a signature covers method, URL, body)."""
        ...

    def describe(self) -> str:
        """Which credential this is, for error messages, with no secret in it."""
        ...

    def refusal_hint(self, server_time: datetime) -> str | None:
        """Why a 401 may have come, given the time the server's answer gave, or None."""
        ...


class RateView(Protocol):
    """What an observer may read of the shared limiter."""

    @property
    def rate(self) -> float:
        """The rate in use, requests per second (0.0: unlimited)."""
        ...

    @property
    def throttled(self) -> int:
        """429s seen so far."""
        ...


class RunObserver(Protocol):
    """Watches a run without taking part in it: metrics, a status page."""

    def on_start(self, limiter: RateView) -> None:
        """The run's limiter, once, before any request."""
        ...

    def on_result(self, result: JobResult) -> None:
        """One job's final result."""
        ...

    def on_lifecycle(self, result: JobResult) -> None:
        """One existing job's result once its start (--start) and wait (--wait) ended."""
        ...

    def on_answer(self, call: str, seconds: float, status: int | None) -> None:
        """One HTTP request done: ``call`` is "create" or "list"; status None if no answer."""
        ...

    def on_ledger(self, problem: str | None) -> None:
        """The ledger became unavailable (``problem`` says why), or answers again (None)."""
        ...

    def on_api_state(self, problem: str | None) -> None:
        """The API became unreachable (or its job list unreadable), or None: it answers again."""
        ...
