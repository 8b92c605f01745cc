"""The jobs a ledger records as not created after a permanent failure, to send them again.

``batchsub retry`` uses it once the user has fixed the cause (a quota raised, a queue made):
each job is resent with the body the ledger recorded, not re-read from its manifest. Rows in
``created`` are never yielded, so a retry cannot touch a job that exists.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from batchsub.jobs import JobResult, JobSpec, LedgerState, ManifestItem
from batchsub.protocols import Ledger

RESEND_STATES = frozenset({LedgerState.FAILED, LedgerState.RETRYING})
"""Known not to have created the job: ``failed`` (permanent) and ``retrying`` (gave up)."""


class LedgerFailedSource:
    """A ``Source`` of the jobs of one project whose ledger state is in ``states``.

    Call ``load()`` first: it opens the ledger, reads those rows and closes it again, because
    the run that follows opens the same ledger itself and a SQLite ledger admits one open at a
    time (an exclusive lock). The jobs are then held in memory until the run ends; failed jobs
    are few, but a ledger with millions of failures would need a streaming variant.
    """

    def __init__(
        self,
        ledger: Ledger,
        project_id: str,
        *,
        states: frozenset[LedgerState] = RESEND_STATES,
    ) -> None:
        self._ledger = ledger
        self._project_id = project_id
        self._states = states
        self._specs: list[JobSpec] | None = None

    async def load(self) -> int:
        """Read the jobs to resend (opening and closing the ledger); returns how many."""
        await self._ledger.open()
        try:
            self._specs = [
                record.spec()
                async for record in self._ledger.records(self._project_id)
                if record.state in self._states
            ]
        finally:
            await self._ledger.close()
        return len(self._specs)

    async def items(self) -> AsyncIterator[ManifestItem]:
        """Yield each loaded job, in the ledger's order (source, then name)."""
        if self._specs is None:
            raise RuntimeError("LedgerFailedSource.load() must be awaited before items()")
        for spec in self._specs:
            yield spec

    async def finish(self, item: ManifestItem, result: JobResult) -> None:
        """Nothing to do: the run records each outcome in the ledger itself."""
