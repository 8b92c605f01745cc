"""The values that flow along the data path: source -> manifest -> submitter -> ledger -> report."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import StrEnum


class Outcome(StrEnum):
    """What a run did for one job, as the report and the exit code see it."""

    CREATED = "created"
    ALREADY_CREATED = "already_created"
    INVALID = "invalid"
    FAILED = "failed"
    UNRESOLVED = "unresolved"
    DRIFTED = "drifted"
    DUPLICATED = "duplicated"  # two jobs of this name exist: the report names both job ids
    HELD = "held"  # a wave before it failed too often (--max-failures): nothing sent for it
    UPDATED = "updated"  # apply: the job now holds its changed manifest (``changes`` says what)
    MISSING = "missing"  # apply: created before, deleted on the server since (not recreated)
    PRUNED = "pruned"  # apply --prune: in the ledger, in no manifest: stopped and deleted


class LedgerState(StrEnum):
    """A job's state in the ledger; only ``created`` and ``failed`` are final."""

    SUBMITTING = "submitting"  # intent committed; a request may be in flight
    UNKNOWN = "unknown"  # the answer was lost: reconcile before sending again
    RETRYING = "retrying"  # a transient failure known not to have created the job
    CREATED = "created"
    FAILED = "failed"  # permanent: needs a fix (quota, missing queue, bad field)


IN_DOUBT_STATES = frozenset({LedgerState.SUBMITTING, LedgerState.UNKNOWN})
EXISTING_OUTCOMES = frozenset(
    {Outcome.CREATED, Outcome.ALREADY_CREATED, Outcome.UPDATED}
)  # the job exists (and matches its manifest)
# Sending the same manifest again will not change these: a person must look. Not created
# (invalid, failed, drifted), or created twice (duplicated: one of the two must go), or
# deleted on the server since (missing: apply --recreate-missing is not there yet). A
# ``held`` job is not broken: a rerun sends it (once the failures of its waves are fixed).
BROKEN_OUTCOMES = frozenset(
    {Outcome.INVALID, Outcome.FAILED, Outcome.DRIFTED, Outcome.DUPLICATED, Outcome.MISSING}
)


# ``JobResult.start`` and ``health`` values (``StartKind``, ``Health`` of ``lifecycle``) that
# are not done as asked: a start failed or unconfirmed; a wait that did not end healthy (or
# finished), or that the run's stop cut short (``interrupted``). They make the exit code 1.
BAD_STARTS = frozenset({"start_failed", "unresolved"})
INTERRUPTED = "interrupted"
BAD_HEALTH = frozenset({"failed", "stopped", "gone", "timed_out", INTERRUPTED})


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One valid job from a manifest: its request body exactly as it will be sent."""

    name: str
    body: bytes  # JSON of the manifest's fields as written, nothing added
    body_hash: str  # sha256 hex of the canonical JSON (sorted keys): format-independent
    source: str  # "path" or "path#index" for an item of a list
    # True when the request model already accepted it, so the submitter need not check again.
    validated: bool = field(default=False, compare=False)


@dataclass(frozen=True, slots=True)
class InvalidManifest:
    """A manifest file or job that cannot be used; ``error`` names the file and field."""

    source: str
    error: str
    name: str | None = None


@dataclass(frozen=True, slots=True)
class RememberedJob:
    """A job of a manifest file the ledger remembers (``FileIndex``): unchanged since every
    job in it was created, so it is not read again."""

    source: str
    name: str
    job_id: int | None
    adopted: bool


ManifestItem = JobSpec | InvalidManifest | RememberedJob


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An API or transport error as recorded in the ledger and the report."""

    message: str
    code: str | None = None
    http_status: int | None = None

    def __str__(self) -> str:
        parts = [
            p for p in (self.code, f"HTTP {self.http_status}" if self.http_status else None) if p
        ]
        return f"{' '.join(parts)}: {self.message}" if parts else self.message


@dataclass(frozen=True, slots=True)
class LedgerRecord:
    """One ledger row, keyed by (project_id, name)."""

    project_id: str
    name: str
    state: LedgerState
    job_id: int | None
    attempts: int
    error: ErrorInfo | None
    source: str
    body_hash: str
    body: bytes
    adopted: bool
    created_at: float  # epoch seconds of the first record
    updated_at: float
    start: StartRecord | None = None  # what the ledger knows of its start (None: never touched)

    def spec(self) -> JobSpec:
        """The job as recorded, to reconcile or resend it without its manifest."""
        return JobSpec(name=self.name, body=self.body, body_hash=self.body_hash, source=self.source)


@dataclass(frozen=True, slots=True)
class Claim:
    """A job held for sending by this worker: its attempt number, and until when it is held.

    ``deadline`` is on ``time.monotonic()``, reckoned from before the claim was asked for, so
    a slow answer only shortens it; ``math.inf`` for a ledger with one writer (SQLite), whose
    claims never expire. A create may leave only while its claim ``covers`` the request.
    """

    attempt: int
    deadline: float = math.inf

    def covers(self, now: float, seconds: float) -> bool:
        """True when the claim still holds ``seconds`` after ``now`` (monotonic time)."""
        return now + seconds < self.deadline


@dataclass(slots=True)
class JobResult:
    """The final word on one job in one run: a row of the report."""

    source: str
    name: str | None
    outcome: Outcome
    job_id: int | None = None
    error: str | None = None
    attempts: int = 0
    adopted: bool = False
    drift: list[str] = field(default_factory=list)
    # DUPLICATED: the other jobs of this name (``job_id`` is the one the ledger keeps).
    duplicate_job_ids: list[int] = field(default_factory=list)
    # The API's answer behind ``error`` (``DLI.0002``, 400), when one is behind it.
    error_code: str | None = None
    http_status: int | None = None
    # INVALID: the first field the manifest's error names (``tags[0].key``); the report's
    # ``field``. None for a file's own error (unreadable, bad JSON).
    error_field: str | None = None
    # UPDATED (and an update that failed): each changed field as ``{field, old, new, how}``.
    changes: list[dict[str, object]] = field(default_factory=list)
    # Starting it (``--start``) and waiting for it (``--wait``); all None when not asked.
    start: str | None = None  # a ``StartKind`` value: started, active, not_started, ...
    health: str | None = None  # a ``Health`` value: healthy, failed, timed_out, ...
    status: str | None = None  # the last DLI status seen (job_running, ...)
    started_at: float | None = None  # epoch seconds DLI took batchsub's start
    running_at: float | None = None  # epoch seconds it was first seen running after it
    start_error: str | None = None  # why it is not started or not healthy (DLI's status_desc)
    # Its body sets restart_when_exception: a wait takes job_running_exception as a passage.
    restarts: bool = False


# --- starts: what the ledger records of starting a job (``protocols.StartLedger``) -------


class StartState(StrEnum):
    """A job's start state in the ledger; absent (None) until batchsub starts it."""

    STARTING = "starting"  # intent committed; a run call may be in flight
    STARTED = "started"  # DLI took the start
    START_FAILED = "start_failed"  # refused for good, gone, or failed before it was healthy


@dataclass(frozen=True, slots=True)
class StartRecord:
    """What the ledger knows of one job's start."""

    name: str
    job_id: int
    state: StartState | None = None
    attempts: int = 0
    last_status: str | None = None
    status_seen_at: float | None = None  # epoch seconds
    error: str | None = None
    started_at: float | None = None
    running_at: float | None = None
    updated_at: float | None = None  # when ``state`` last changed
    claim_until: float | None = None  # a worker's claim on a starting row (shared ledgers)


@dataclass(frozen=True, slots=True)
class StartIntent:
    """The intent to send a run for one job, committed before the call."""

    name: str
    job_id: int
    status_before: str  # the status the decision to start was made on
    expected_attempts: int  # compare-and-set: ``start_attempts`` as the decision read it


@dataclass(frozen=True, slots=True)
class StartOutcome:
    """The outcome of a start: ``state`` None means known not started, nothing in flight."""

    name: str
    job_id: int
    state: StartState | None
    error: str | None = None
    status: str | None = None  # the status that decided it, when one did


@dataclass(frozen=True, slots=True)
class StatusSeen:
    """A status seen for one job; ``failure`` set: it failed before it was healthy."""

    name: str
    job_id: int
    status: str
    failure: str | None = None


# --- updates: what the ledger records of updating a job (``protocols.UpdateLedger``) ------


class UpdateState(StrEnum):
    """A job's update state in the ledger, one step at a time (``protocols.UpdateLedger``)."""

    PLANNED = "planned"  # intent and body committed; nothing sent yet
    STOPPING = "stopping"  # a stop call may be in flight
    STOPPED = "stopped"  # seen stopped (after our stop): the PUT may leave
    UPDATING = "updating"  # a PUT may be in flight
    UPDATED = "updated"  # the server holds the body (its answer, or its detail, says so)
    RESTARTING = "restarting"  # a run call may be in flight
    DONE = "done"  # finished: the job holds the body (and runs again if it ran)
    FAILED = "failed"  # given up: ``error`` says why (a refused PUT, a job gone)
    PRUNING = "pruning"  # apply --prune: a stop or delete may be in flight (finished by --prune)
    PRUNED = "pruned"  # apply --prune: deleted (the jobs row stays: the ledger keeps its history)


UNFINISHED_UPDATES = frozenset(
    {
        UpdateState.PLANNED,
        UpdateState.STOPPING,
        UpdateState.STOPPED,
        UpdateState.UPDATING,
        UpdateState.UPDATED,
        UpdateState.RESTARTING,
    }
)


@dataclass(frozen=True, slots=True)
class UpdateRecord:
    """What the ledger knows of one job's latest update, keyed by (project_id, name).

    ``body``/``body_hash``: the manifest the update makes the job hold; ``put_body``: the
    partial body the PUT sends (only the changed fields for an update in place). ``restart``:
    the job was running and is stopped, updated and started again; ``savepoint``: the stop
    takes a savepoint and the start resumes from it.
    """

    name: str
    job_id: int
    state: UpdateState
    body: bytes
    body_hash: str
    put_body: bytes
    restart: bool = False
    savepoint: bool = False
    attempts: int = 0  # calls begun for the current step (stops, PUTs or runs)
    error: str | None = None
    updated_at: float = 0.0  # epoch seconds of the last step


@dataclass(frozen=True, slots=True)
class UpdateStep:
    """One step of an update committed (``error`` with ``FAILED``, or kept for ``DONE``)."""

    name: str
    job_id: int
    state: UpdateState
    error: str | None = None
    sent: bool = False  # the step begins a call: its attempts count goes up
