"""SqliteLedger on a real file system that fills up: writes wait for space, or fail in one line."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from batchsub.errors import LedgerUnavailable
from batchsub.jobs import LedgerState
from batchsub.ledgers.outage import Outage
from batchsub.ledgers.sqlite import SqliteLedger
from tests.faults import fill
from tests.support import attempt_of, job_spec

P = "project-1"
FAST: dict[str, Any] = {"first_delay": 0.05, "max_delay": 0.1}


def body(name: str) -> bytes:
    return b'{"name":"%s","queue_name":"q1","desc":"%s"}' % (name.encode(), b"x" * 400)


async def test_a_full_disk_holds_writes_until_there_is_space_again(small_disk: Path) -> None:
    outage = Outage(limit=None, **FAST)
    async with SqliteLedger(small_disk / "ledger.db", outage=outage) as ledger:
        for n in range(20):
            assert (
                attempt_of(await ledger.begin_attempt(P, job_spec(f"a{n}", body=body(f"a{n}"))))
                == 1
            )
        filler = fill(small_disk)
        with capture_logs() as logs:
            writes = [
                ledger.record(
                    P, job_spec(f"a{n}", body=body(f"a{n}")), LedgerState.CREATED, job_id=n
                )
                for n in range(20)
            ]
            await asyncio.sleep(0.5)
            assert not any(write.done() for write in writes)
            assert outage.problem == "write failed: database or disk is full"
            filler.unlink()
            await asyncio.wait_for(asyncio.gather(*writes), 3)
        found = await ledger.get_many(P, [f"a{n}" for n in range(20)])
    assert {rec.name: rec.job_id for rec in found.values()} == {f"a{n}": n for n in range(20)}
    assert [e["event"] for e in logs if e["event"].startswith("ledger.")] == [
        "ledger.unavailable",
        "ledger.recovered",
    ]


async def test_past_the_limit_a_write_fails_in_one_line_naming_the_file(small_disk: Path) -> None:
    path = small_disk / "ledger.db"
    async with SqliteLedger(path, outage=Outage(limit=0.3, **FAST)) as ledger:
        await ledger.begin_attempt(P, job_spec("a", body=body("a")))
        fill(small_disk)
        with pytest.raises(LedgerUnavailable) as caught:
            for n in range(50):  # the WAL has room for a few rows
                spec = job_spec(f"b{n}", body=body(f"b{n}"))
                await asyncio.wait_for(ledger.begin_attempt(P, spec), 3)
    message = str(caught.value)
    assert message.startswith(f"ledger {path} unwritable for ")
    assert message.endswith(" s: write failed: database or disk is full")
