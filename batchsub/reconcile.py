"""Find out whether a job exists on the server, by its exact name.

DLI's create call takes no idempotency key, so a create whose answer was lost may or may not
have made the job. Before such a job is ever sent again it is looked up here; a job found is
adopted, not duplicated. The first lookup of a run lists every Flink Jar job once (a snapshot),
so that jobs made before batchsub, or by a crashed run, are adopted with few list calls.
"""

from __future__ import annotations

import asyncio
import functools

import structlog

from batchsub.calls import SafeCaller
from batchsub.client import DliClient, RemoteJob
from batchsub.errors import ApiError, FatalApiError, RetryableError

log = structlog.get_logger("batchsub.reconcile")


class Reconciler:
    """Answers "does a job with this exact name exist, and with which job_id?"."""

    def __init__(self, client: DliClient, caller: SafeCaller) -> None:
        self._client = client
        self._caller = caller
        self._snapshot: dict[str, int] | None = None
        self._snapshot_lock = asyncio.Lock()
        self.list_calls = 0

    async def snapshot(self) -> dict[str, int]:
        """Name -> job_id of every Flink Jar job at the first call (listed once, paged)."""
        async with self._snapshot_lock:
            if self._snapshot is None:
                try:
                    jobs = await self._list_all(name=None)
                except (FatalApiError, RetryableError):
                    raise
                except ApiError as exc:
                    # The endpoint does not list jobs (a gateway or stand-in without the list
                    # call). Creating stays safe through the ledger; adoption is off.
                    log.warning(
                        "remote.cannot_list",
                        error=str(exc),
                        effect="jobs made outside batchsub are not detected",
                    )
                    jobs = []
                self._snapshot = _lowest_ids(jobs)
                log.info("remote.listed", jobs=len(self._snapshot), list_calls=self.list_calls)
            return self._snapshot

    async def find(self, name: str) -> int | None:
        """The job_id of the job named exactly ``name`` now, or None (a fresh name query)."""
        jobs = await self._list_all(name=name)
        matches = _lowest_ids([job for job in jobs if job.name == name])
        job_id = matches.get(name)
        if job_id is not None and sum(1 for job in jobs if job.name == name) > 1:
            log.warning("remote.duplicate_name", name=name, job_id=job_id)
        return job_id

    async def _list_all(self, *, name: str | None) -> list[RemoteJob]:
        jobs: list[RemoteJob] = []
        offset = 0
        while True:
            self.list_calls += 1
            page = await self._caller.call(
                "list_jobs", functools.partial(self._client.list_page, name=name, offset=offset)
            )
            jobs.extend(page.jobs)
            offset += len(page.jobs)
            if not page.jobs or offset >= page.total_count:
                return jobs


def _lowest_ids(jobs: list[RemoteJob]) -> dict[str, int]:
    # Several jobs may share a name (made by hand, or by a tool that duplicated them);
    # the oldest one is the one to adopt.
    found: dict[str, int] = {}
    for job in jobs:
        if job.name not in found or job.job_id < found[job.name]:
            found[job.name] = job.job_id
    return found
