"""The run's account: counts, the first errors, and the JSON report with a stable schema.

Report schema (``--report PATH``), version 2; the JSON Schema is
``batchsub/schemas/report.schema.json`` (``report_schema()``)::

    {"summary": {"schema_version": 2, "batchsub_version": "0.1.0",
                 "project_id": str | null, "endpoint": URL (password masked) | null,
                 "total": N, "created": N, "already_created": N, "invalid": N, "failed": N,
                 "unresolved": N, "drifted": N, "duplicated": N, "adopted": N,
                 "creates_sent": N, "list_calls": N, "throttled": N, "rate": R, "duration_s": S,
                 "exit_code": 0|1|2|130|143, "interrupted": bool, "fatal": str | null,
                 "first_errors": [{"source": ..., "name": ..., "outcome": ..., "error": ...}]},
     "jobs": [{"source": "path" | "path#index", "name": str | null,
               "outcome": "created" | "already_created" | "invalid" | "failed" | "unresolved"
                          | "drifted" | "duplicated",
               "job_id": int | null, "error": str | null, "attempts": int, "adopted": bool,
               "drift": [field, ...], "duplicate_job_ids": [job_id, ...],
               "error_code": "DLI.0002" | null, "http_status": int | null,
               "field": "tags[0].key" | null}]}

``duplicated``: two jobs (or more) of that name exist on the server; ``job_id`` is the one
the ledger keeps, ``duplicate_job_ids`` the others. It makes the exit code 1.
``schema_version`` 1 was the shape before the version, the target, ``error_code``,
``http_status`` and ``field`` (it had no ``schema_version``). New outcomes and new fields are
additive and keep the version; a change a reader of the old shape would misread bumps it.

Rows are written to a temporary file as they come, so memory stays flat over any number of
jobs, and the report appears atomically when the run ends (``batchsub.files.open_output``:
``-`` is standard output, a symlink stays a symlink, a device or FIFO is written in place).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.resources
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import orjson

from batchsub import __version__
from batchsub.errors import OutputError, one_line
from batchsub.files import check_output, is_stdout, open_output
from batchsub.jobs import BAD_HEALTH, BAD_STARTS, EXISTING_OUTCOMES, JobResult, Outcome
from batchsub.masking import mask_url
from batchsub.text import clip, iso_utc, safe_value

FIRST_ERRORS = 10
MAX_ERROR_CHARS = 4000  # one job's error in the report and the summary, whatever made it
# Outcomes after which the job exists on the server.


EXIT_FATAL = 2  # a credential the API refused, or a setting, stopped the run
# Summary counts of --start / --wait: each job that exists adds to one. The first three make
# the exit code 1: a start that failed (or a job that failed before it was healthy, stopped
# or was deleted), a wait that ran out, a start not confirmed (a rerun decides it).
LIFECYCLE_FAILURES = ("start_failed", "timed_out", "starting")
LIFECYCLE_COUNTS = (*LIFECYCLE_FAILURES, "running", "finished", "started", "not_started")

SCHEMA_VERSION = 2
# Jobs done as asked: they exist (and match their manifest), or were pruned on purpose.
_AS_ASKED = EXISTING_OUTCOMES | {Outcome.PRUNED}
SCHEMA_FILE = "schemas/report.schema.json"  # in the package


class RunAccount:
    """Counts outcomes as they arrive and streams report rows to disk when asked."""

    def __init__(self, report_path: Path | None = None) -> None:
        self.counts: Counter[Outcome] = Counter()
        self.adopted = 0
        # Jobs by how their start and wait ended (``LIFECYCLE_COUNTS``), from ``add_row``.
        self.lifecycle: Counter[str] = Counter()
        self.lifecycle_shown = False  # --start or --wait: the summary has their counts
        self.first_errors: list[dict[str, Any]] = []
        self.project_id: str | None = None
        self.endpoint: str | None = None  # its password masked
        self._listeners: list[Callable[[JobResult], None]] = []
        self._report_path = report_path
        self._rows: IO[bytes] | None = None
        self._rows_failed: OSError | None = None  # the temporary rows file could not be written
        if report_path is not None:
            check_output(report_path, "--report")  # a bad path fails before anything is sent
            self._rows = tempfile.TemporaryFile()

    @property
    def report_to_stdout(self) -> bool:
        """True when the report goes to standard output (``--report -``, ``/dev/stdout``)."""
        return is_stdout(self._report_path)

    def set_target(self, project_id: str, endpoint: str) -> None:
        """Where the jobs go, for the summary (the endpoint's password masked)."""
        self.project_id = project_id
        self.endpoint = mask_url(endpoint)

    def listen(self, listener: Callable[[JobResult], None]) -> None:
        """Call ``listener`` with each result as it is counted (the progress bar)."""
        self._listeners.append(listener)

    @property
    def total(self) -> int:
        """Every job and invalid manifest seen so far."""
        return sum(self.counts.values())

    def add(self, result: JobResult, *, row: bool = True) -> None:
        """Count one result and append its report row (``row`` False: ``add_row`` will,
        once its start and wait have ended)."""
        if result.error is not None and len(result.error) > MAX_ERROR_CHARS:
            result = dataclasses.replace(result, error=clip(result.error, MAX_ERROR_CHARS))
        self.counts[result.outcome] += 1
        for listener in self._listeners:
            listener(result)
        if result.adopted:
            self.adopted += 1
        if result.outcome not in _AS_ASKED and len(self.first_errors) < FIRST_ERRORS:
            self.first_errors.append(
                {
                    "source": result.source,
                    "name": result.name,
                    "outcome": result.outcome.value,
                    "error": result.error,
                }
            )
        if row:
            self._write_row(result)

    def add_row(self, result: JobResult) -> None:
        """The row of a result counted before (``add(row=False)``), with its start and wait."""
        if result.start_error is not None and len(result.start_error) > MAX_ERROR_CHARS:
            result = dataclasses.replace(
                result, start_error=clip(result.start_error, MAX_ERROR_CHARS)
            )
        self.lifecycle[_lifecycle_count(result)] += 1
        bad = result.start in BAD_STARTS or result.health in BAD_HEALTH
        if bad and len(self.first_errors) < FIRST_ERRORS:
            what = f"not healthy ({result.health})" if result.health in BAD_HEALTH else None
            what = what or ("start failed" if result.start == "start_failed" else "unconfirmed")
            self.first_errors.append(
                {
                    "source": result.source,
                    "name": result.name,
                    "outcome": result.outcome.value,
                    "error": f"{what}: {result.start_error or 'no reason given'}",
                }
            )
        self._write_row(result)

    def _write_row(self, result: JobResult) -> None:
        if self._rows is not None:  # no row is built per job without a report to write
            row = job_row(result)
            try:
                line = orjson.dumps(row)
            except orjson.JSONEncodeError:  # text that is not UTF-8: never lose the row for it
                line = orjson.dumps(safe_value(row))
            try:
                self._rows.write(line + b"\n")
            except OSError as exc:  # the temporary folder is full: the run goes on
                self._rows_failed = exc
                with contextlib.suppress(OSError):  # its flush fails the same way
                    self._rows.close()
                self._rows = None

    def exit_code(self, *, fatal: bool = False) -> int:
        """0 when every job exists (and, when asked, started and healthy); 2 when a credential
        or setting stopped the run; else 1."""
        if fatal:
            return EXIT_FATAL
        if any(self.lifecycle[key] for key in LIFECYCLE_FAILURES):
            return 1
        return 0 if all(outcome in _AS_ASKED for outcome in self.counts.elements()) else 1

    def summary(self, **extra: Any) -> dict[str, Any]:
        """The summary object of the report (counts for every outcome, even zero)."""
        summary: dict[str, Any] = {
            "schema_version": SCHEMA_VERSION,
            "batchsub_version": __version__,
            "project_id": self.project_id,
            "endpoint": self.endpoint,
            "total": self.total,
        }
        for outcome in Outcome:
            summary[outcome.value] = self.counts[outcome]
        summary["adopted"] = self.adopted
        if self.lifecycle_shown:  # --start or --wait
            summary.update({key: self.lifecycle[key] for key in LIFECYCLE_COUNTS})
        summary.update(extra)
        summary["first_errors"] = self.first_errors
        return summary

    def write_report(self, summary: dict[str, Any]) -> None:
        """Write the JSON report (see ``batchsub.files.open_output``); OutputError if not."""
        if self._report_path is None:
            return
        target, rows = self._report_path, self._rows
        self._rows = None
        if rows is None:
            reason = one_line(self._rows_failed) if self._rows_failed else "no rows kept"
            where = tempfile.gettempdir()
            raise OutputError(f"--report {target}: cannot write it: {reason} (in {where})")
        try:
            rows.flush()
            rows.seek(0)
            with open_output(target, "--report") as out:
                out.write(b'{"summary": ')
                out.write(orjson.dumps(safe_value(summary)))
                out.write(b', "jobs": [')
                first = True
                for line in rows:
                    if not first:
                        out.write(b",")
                    out.write(b"\n")
                    out.write(line.rstrip(b"\n"))
                    first = False
                out.write(b"\n]}\n")
        except OSError as exc:  # reading the rows back
            raise OutputError(f"--report {target}: cannot write it: {one_line(exc)}") from None
        finally:
            with contextlib.suppress(OSError):  # a full temporary folder fails its flush again
                rows.close()


def job_row(result: JobResult) -> dict[str, Any]:
    """One job's row of the report."""
    return {
        "source": result.source,
        "name": result.name,
        "outcome": result.outcome.value,
        "job_id": result.job_id,
        "error": result.error,
        "attempts": result.attempts,
        "adopted": result.adopted,
        "drift": result.drift,
        "duplicate_job_ids": result.duplicate_job_ids,
        "error_code": result.error_code,
        "http_status": result.http_status,
        "field": result.error_field,
        "changes": result.changes,
        "start": result.start,
        "health": result.health,
        "status": result.status,
        "started_at": iso_time(result.started_at),
        "running_at": iso_time(result.running_at),
        "start_error": result.start_error,
    }


def iso_time(epoch: float | None) -> str | None:
    """Epoch seconds as the report writes times (ISO 8601 UTC, to the millisecond), or None."""
    return None if epoch is None else iso_utc(epoch)


def _lifecycle_count(result: JobResult) -> str:
    """The one summary count a job's start and wait add to."""
    if result.health in BAD_HEALTH:
        return "timed_out" if result.health == "timed_out" else "start_failed"
    if result.start == "start_failed":
        return "start_failed"
    if result.start == "unresolved":
        return "starting"
    if result.health in ("healthy", "finished") or result.status == "job_running":
        return "running" if result.health != "finished" else "finished"
    if result.start == "not_started":
        return "not_started"
    return "started"  # started (or on its way up) and not waited for


def report_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of the report, as shipped in the package."""
    text = importlib.resources.files("batchsub").joinpath(SCHEMA_FILE).read_bytes()
    schema: dict[str, Any] = orjson.loads(text)
    return schema
