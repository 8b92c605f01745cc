"""Helpers for tests that run the engine on jobs of their own making."""

from __future__ import annotations

from collections.abc import AsyncIterator

from batchsub.jobs import JobResult, ManifestItem
from batchsub.settings import Settings


class ListSource:
    """A finite source of ready-made items (as a buggy or foreign source could yield them);
    ``results`` holds each one's result by name."""

    def __init__(self, items: list[ManifestItem]) -> None:
        self._items = items
        self.results: dict[str | None, JobResult] = {}

    async def items(self) -> AsyncIterator[ManifestItem]:
        for item in self._items:
            yield item

    async def finish(self, item: ManifestItem, result: JobResult) -> None:
        self.results[item.name] = result


def on_ledger(ledger: str, settings: Settings) -> Settings:
    """``settings`` with ``--ledger`` a PostgreSQL URL or a SQLite path."""
    return settings.model_copy(update={"ledger": ledger})
