"""Whether the API can be reached and read: an outage is logged once when it starts and once
when it ends (not at every retry), and reported to whoever keeps ``/healthz`` honest.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

log = structlog.get_logger("batchsub.api")


class Reachability:
    """Tracks the API's state from the answers the client gets; ``problem`` is None when fine.

    ``on_change`` is called with the problem when an outage starts, and with None when it ends.
    ``quiet``: log nothing (a command whose error line says it all).
    """

    def __init__(
        self,
        on_change: Callable[[str | None], None] | None = None,
        *,
        quiet: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.problem: str | None = None
        self._since = 0.0
        self._on_change = on_change
        self._quiet = quiet
        self._clock = clock

    def lost(self, problem: str) -> None:
        """No connection could be made, or the answer was not the API's (a proxy's page)."""
        if self.problem is not None:
            return
        self.problem = problem
        self._since = self._clock()
        if not self._quiet:
            effect = "nothing is created until it answers"
            log.warning("api.unreachable", error=problem, effect=effect)
        if self._on_change is not None:
            self._on_change(problem)

    def answered(self) -> None:
        """The API gave an answer it meant (an error of its own included)."""
        if self.problem is None:
            return
        self.problem = None
        if not self._quiet:
            log.info("api.reachable", after_s=round(self._clock() - self._since, 3))
        if self._on_change is not None:
            self._on_change(None)
