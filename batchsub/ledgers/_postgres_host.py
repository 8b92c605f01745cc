"""What ``PostgresLedger`` gives the mixins that hold its starts and its updates.

``PostgresStarts`` and ``PostgresUpdates`` keep ``postgres.py`` under its size; both run their
statements through the ledger's own bounded, outage-aware ``_statement`` and ``_fetch``. This
base declares those once, for the type checker; ``PostgresLedger`` overrides every one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeAlias, TypeVar

import asyncpg

T = TypeVar("T")
Connection: TypeAlias = "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"  # generic in stubs


class PostgresHost:
    """The attributes and statements the mixins use; ``PostgresLedger`` provides them."""

    _clock: Callable[[], float]
    _lease: float

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        raise NotImplementedError

    async def _statement(
        self,
        what: str,
        statement: Callable[[Connection], Awaitable[T]],
        *,
        new_work: bool = True,
    ) -> T:
        raise NotImplementedError

    def _detach(self, write: Awaitable[T]) -> asyncio.Future[T]:
        raise NotImplementedError
