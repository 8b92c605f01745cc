"""Send a finite source in waves: each wave created, started and healthy before the next.

The source is read to its end first (waves are counted in jobs, and a percentage needs the
total): invalid manifests go with the first wave, to be reported; the jobs are split by
``waves.wave_sizes``. Each wave is sent through the submitter as a source of its own (its
items' ``finish`` still goes to the real source), then the rollout is drained: every job of
the wave has its row, started and healthy for ``--healthy-for`` or failed. The wave's
failures are the jobs not created (invalid manifests aside) and those whose start or wait
did not end well; once more than ``--max-failures`` of the waves so far failed, the jobs of
the waves not sent are reported ``held``, with nothing sent for them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Sequence
from typing import Protocol

import structlog

from batchsub.jobs import InvalidManifest, JobResult, ManifestItem, Outcome
from batchsub.lifecycle.rollout import Rollout
from batchsub.lifecycle.waves import WaveController, WaveTarget, wave_sizes
from batchsub.protocols import Source

log = structlog.get_logger("batchsub.lifecycle.waves")


class _Part:
    """Some items of a source, as a source: ``finish`` goes to the source they came from."""

    def __init__(self, items: Sequence[ManifestItem], source: Source) -> None:
        self._items = items
        self._source = source

    async def items(self) -> AsyncIterator[ManifestItem]:
        for item in self._items:
            yield item

    async def finish(self, item: ManifestItem, result: JobResult) -> None:
        await self._source.finish(item, result)


class Sender(Protocol):
    """What sends one wave's items (the submitter)."""

    async def run(self, source: Source) -> None:
        """Process every item of ``source``; return when each has a result."""
        ...

    @property
    def stopped(self) -> bool:
        """True once a stop was asked for or a fatal answer arrived."""
        ...


class WaveRun:
    """One rollout in waves, over one finite source."""

    def __init__(
        self,
        targets: Sequence[WaveTarget],
        max_failures: int,
        sender: Sender,
        rollout: Rollout,
    ) -> None:
        self._targets = targets
        self._max_failures = max_failures
        self._sender = sender
        self._rollout = rollout

    async def run(
        self,
        source: Source,
        report: Callable[[JobResult], None],
        create_failures: Callable[[], int],
    ) -> None:
        """Send ``source`` wave by wave; ``report`` gets the rows of jobs held or not sent."""
        items = [item async for item in source.items()]
        invalid = [item for item in items if isinstance(item, InvalidManifest)]
        jobs = [item for item in items if not isinstance(item, InvalidManifest)]
        sizes = wave_sizes(self._targets, len(jobs))
        if not sizes:  # no job to send: the invalid manifests are still reported
            await self._sender.run(_Part(invalid, source))
            return
        control = WaveController(sizes, self._max_failures)
        sent = 0
        while (wave := control.next_wave()) is not None:
            part = jobs[sent : sent + wave.size]
            sent += wave.size
            before = create_failures() + self._rollout.failures
            log.info("wave.started", wave=wave.number, jobs=wave.size, of=len(jobs))
            await self._sender.run(_Part([*invalid, *part] if wave.number == 1 else part, source))
            await self._rollout.drain()
            failed = create_failures() + self._rollout.failures - before
            going_on = control.finish(min(failed, wave.size))
            log.info(
                "wave.finished",
                wave=wave.number,
                failed=failed,
                failures=control.failures,
                max_failures=self._max_failures,
            )
            if self._sender.stopped:
                for item in jobs[sent:]:
                    report(_left(item, Outcome.UNRESOLVED, "not sent: the run stopped"))
                return
            if not going_on:
                why = (
                    f"held: {control.failures} jobs of waves 1-{wave.number} failed, more than"
                    f" --max-failures {self._max_failures}; nothing sent (a rerun sends it)"
                )
                log.warning("wave.held", held=control.held, failures=control.failures)
                for item in jobs[sent:]:
                    report(_left(item, Outcome.HELD, why))
                return


def _left(item: ManifestItem, outcome: Outcome, why: str) -> JobResult:
    return JobResult(item.source, item.name, outcome, error=why)
