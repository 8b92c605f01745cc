"""Count each item's result per container (a file, a message), and hand the container back,
with its results in item order, once its last item has one.

The directory (remember a file once every job of it exists), the drop folder (move a file
by its jobs' outcomes) and the queue (ack, dead-letter or requeue a message) all do this.
Items are tracked by identity, and each is held until its result comes: two equal items
(one manifest published twice) stay apart, and an ``id()`` is never reused while it is a key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from batchsub.jobs import JobResult, ManifestItem

C = TypeVar("C")


@dataclass(slots=True)
class _Open(Generic[C]):
    container: C
    results: list[JobResult | None]
    pending: int


class Tally(Generic[C]):
    """The containers whose items are out, and which of their results are in."""

    def __init__(self) -> None:
        # id(item) -> (the item, held so that its id stays its own; its container; its index)
        self._items: dict[int, tuple[ManifestItem, _Open[C], int]] = {}
        self._open = 0

    def __len__(self) -> int:
        """Containers with an item still out."""
        return self._open

    def track(self, container: C, items: Sequence[ManifestItem]) -> None:
        """Expect one result for each of ``items``, which belong to ``container``."""
        if not items:
            return
        entry = _Open(container, [None] * len(items), len(items))
        for index, item in enumerate(items):
            self._items[id(item)] = (item, entry, index)
        self._open += 1

    def finish(self, item: ManifestItem, result: JobResult) -> tuple[C, list[JobResult]] | None:
        """Note ``item``'s result: its container and every result of it, once it was the last.

        None while others are out, and for an item not tracked (or tracked no more).
        """
        found = self._items.pop(id(item), None)
        if found is None:
            return None
        _, entry, index = found
        entry.results[index] = result
        entry.pending -= 1
        if entry.pending:
            return None
        self._open -= 1
        return entry.container, [r for r in entry.results if r is not None]

    def clear(self) -> None:
        """Forget every container (the run is over: what is left is given back)."""
        self._items.clear()
        self._open = 0
