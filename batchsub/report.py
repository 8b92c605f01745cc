"""The run's account: counts, the first errors, and the JSON report with a stable schema.

Report schema (``--report PATH``)::

    {"summary": {"total": N, "created": N, "already_created": N, "invalid": N, "failed": N,
                 "unresolved": N, "drifted": N, "duplicated": N, "adopted": N,
                 "creates_sent": N, "list_calls": N, "throttled": N, "rate": R, "duration_s": S,
                 "exit_code": 0|1|2,
                 "first_errors": [{"source": ..., "name": ..., "outcome": ..., "error": ...}]},
     "jobs": [{"source": "path" | "path#index", "name": str | null,
               "outcome": "created" | "already_created" | "invalid" | "failed" | "unresolved"
                          | "drifted" | "duplicated",
               "job_id": int | null, "error": str | null, "attempts": int, "adopted": bool,
               "drift": [field, ...], "duplicate_job_ids": [job_id, ...]}]}

``duplicated``: two jobs (or more) of that name exist on the server; ``job_id`` is the one
the ledger keeps, ``duplicate_job_ids`` the others. It makes the exit code 1.

Rows are written to a temporary file as they come, so memory stays flat over any number of
jobs, and the report appears atomically when the run ends.
"""

from __future__ import annotations

import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import IO, Any

import orjson

from batchsub.errors import ConfigError
from batchsub.jobs import EXISTING_OUTCOMES, JobResult, Outcome

FIRST_ERRORS = 10
# Outcomes after which the job exists on the server.


EXIT_FATAL = 2  # a credential the API refused, or a setting, stopped the run


class RunAccount:
    """Counts outcomes as they arrive and streams report rows to disk when asked."""

    def __init__(self, report_path: Path | None = None) -> None:
        self.counts: Counter[Outcome] = Counter()
        self.adopted = 0
        self.first_errors: list[dict[str, Any]] = []
        self._report_path = report_path
        self._rows: IO[bytes] | None = None
        if report_path is not None:
            directory = report_path.parent if str(report_path.parent) else Path(".")
            if not directory.is_dir():
                raise ConfigError(f"--report {report_path}: directory {directory} does not exist")
            self._rows = tempfile.TemporaryFile()

    @property
    def total(self) -> int:
        """Every job and invalid manifest seen so far."""
        return sum(self.counts.values())

    def add(self, result: JobResult) -> None:
        """Count one result and append its report row."""
        self.counts[result.outcome] += 1
        if result.adopted:
            self.adopted += 1
        if result.outcome not in EXISTING_OUTCOMES and len(self.first_errors) < FIRST_ERRORS:
            self.first_errors.append(
                {
                    "source": result.source,
                    "name": result.name,
                    "outcome": result.outcome.value,
                    "error": result.error,
                }
            )
        if self._rows is not None:  # no row is built per job without a report to write
            self._rows.write(orjson.dumps(job_row(result)))
            self._rows.write(b"\n")

    def exit_code(self, *, fatal: bool = False) -> int:
        """0 when every job exists; 2 when a credential or setting stopped the run; else 1."""
        if fatal:
            return EXIT_FATAL
        return 0 if all(outcome in EXISTING_OUTCOMES for outcome in self.counts.elements()) else 1

    def summary(self, **extra: Any) -> dict[str, Any]:
        """The summary object of the report (counts for every outcome, even zero)."""
        summary: dict[str, Any] = {"total": self.total}
        for outcome in Outcome:
            summary[outcome.value] = self.counts[outcome]
        summary["adopted"] = self.adopted
        summary.update(extra)
        summary["first_errors"] = self.first_errors
        return summary

    def write_report(self, summary: dict[str, Any]) -> None:
        """Write the JSON report atomically (a temporary file renamed over the target)."""
        if self._rows is None or self._report_path is None:
            return
        target = self._report_path
        rows = self._rows
        rows.flush()
        rows.seek(0)
        fd, tmp_name = tempfile.mkstemp(prefix=".report-", dir=target.parent or Path("."))
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(b'{"summary": ')
                out.write(orjson.dumps(summary))
                out.write(b', "jobs": [')
                first = True
                for line in rows:
                    if not first:
                        out.write(b",")
                    out.write(b"\n")
                    out.write(line.rstrip(b"\n"))
                    first = False
                out.write(b"\n]}\n")
            os.replace(tmp_name, target)
        except OSError as exc:
            Path(tmp_name).unlink(missing_ok=True)
            raise ConfigError(f"--report {target}: cannot write it: {exc}") from None
        finally:
            rows.close()
            self._rows = None


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
    }
