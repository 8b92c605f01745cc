"""The event loop every long-running command runs on: uvloop when installed, else asyncio's.

uvloop's loop and transports are written in Cython on libuv: aiohttp's per-request cost on
the loop thread drops, and the loop thread is what limits a run at no rate limit
(bench/results.md section 10). The ``event_loop`` setting (``BATCHSUB_EVENT_LOOP=asyncio``)
picks the standard loop, to rule uvloop out when chasing a problem.

While a command runs, the objects that exist when it starts (every imported module, class
and schema) are frozen out of the cyclic garbage collector, and the collector runs after
10,000 new objects instead of 700: its pauses stalled every request in flight, and now are
a small fraction of what they were (bench/results.md section 10).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Coroutine, Iterator
from typing import Any, Literal, TypeVar

from batchsub.errors import ConfigError

_T = TypeVar("_T")

EVENT_LOOP_VARIABLE = "BATCHSUB_EVENT_LOOP"  # Settings.event_loop, from the environment
_YOUNG_OBJECTS_PER_COLLECTION = 10_000
EventLoopChoice = Literal["auto", "uvloop", "asyncio"]


def loop_name(wanted: EventLoopChoice = "auto") -> str:
    """``uvloop`` or ``asyncio``: the loop ``run`` will use for the ``event_loop`` setting."""
    if wanted == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if wanted == "uvloop":
            raise ConfigError(
                f"{EVENT_LOOP_VARIABLE}=uvloop but uvloop is not installed (pip install uvloop)"
            ) from None
        return "asyncio"
    return "uvloop"


def run(main: Coroutine[Any, Any, _T], loop: EventLoopChoice = "auto") -> _T:
    """``asyncio.run(main)`` on the loop ``loop_name(loop)`` picks."""
    try:
        name = loop_name(loop)
    except ConfigError:
        main.close()  # never started: no "coroutine was never awaited" warning
        raise
    with _fewer_collections():
        if name == "uvloop":
            import uvloop

            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(main)
        return asyncio.run(main)


@contextlib.contextmanager
def _fewer_collections() -> Iterator[None]:
    """Freeze what exists now out of the garbage collector, and collect less often; undone after.

    Undone so that a caller in the same process (the tests) gets its collector back as it was.
    """
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(_YOUNG_OBJECTS_PER_COLLECTION, *threshold[1:])
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()
