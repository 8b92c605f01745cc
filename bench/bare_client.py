"""The practical ceiling: a bare aiohttp loop that signs and posts pre-read bodies.

No validation, no ledger, no retries, no logs: read every file into memory, then N tasks take
the next body, sign it (``batchsub.auth.AkSkAuth``) and POST it.
Usage: ``python bench/bare_client.py DIR ENDPOINT [--concurrency N] [--uvloop]``; credentials
as the SDK's. ``--uvloop`` runs it on uvloop, as batchsub runs by default.
Prints one JSON line: created and failed counts, and ``post_s``, the seconds from the first
request to the last answer (start-up and file reading excluded).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
from yarl import URL

from batchsub.auth import AkSkAuth


async def post_all(bodies: list[bytes], endpoint: str, concurrency: int) -> int:
    """POST every body with ``concurrency`` tasks; returns how many answered 200."""
    project = os.environ["HUAWEICLOUD_SDK_PROJECT_ID"]
    auth = AkSkAuth(os.environ["HUAWEICLOUD_SDK_AK"], os.environ["HUAWEICLOUD_SDK_SK"], project)
    url = URL(endpoint) / "v1.0" / project / "streaming" / "flink-jobs"
    pending: Iterator[bytes] = iter(bodies)
    created = 0

    async def worker(session: aiohttp.ClientSession) -> None:
        nonlocal created
        for body in pending:
            headers = auth.headers("POST", url, body)
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                created += resp.status == 200

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with asyncio.TaskGroup() as group:
            for _ in range(concurrency):
                group.create_task(worker(session))
    return created


def main() -> int:
    """Post one create per manifest file; exit 0 when every create succeeded."""
    parser = argparse.ArgumentParser()
    parser.add_argument("directory", type=Path)
    parser.add_argument("endpoint")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    bodies = [path.read_bytes() for path in sorted(args.directory.glob("*.json"))]
    posting = post_all(bodies, args.endpoint, args.concurrency)
    started = time.perf_counter()
    if args.uvloop:
        import uvloop

        created = uvloop.run(posting)
    else:
        created = asyncio.run(posting)
    post_s = time.perf_counter() - started
    print(json.dumps({"created": created, "failed": len(bodies) - created, "post_s": post_s}))
    return 0 if created == len(bodies) else 1


if __name__ == "__main__":
    raise SystemExit(main())
