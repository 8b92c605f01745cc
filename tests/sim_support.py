"""DLI calls against a test simulator over real HTTP, for the simulator's own tests; and the
simulator with a fault of a test's own (``simulator_with``: a middleware before its handlers).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from batchsub.http_server import serve_app
from batchsub.simulator import RunningSimulator, SimulatorConfig, create_app

Middleware = Any  # aiohttp's middleware type is private


@contextlib.asynccontextmanager
async def simulator_with(
    config: SimulatorConfig, middleware: Middleware
) -> AsyncIterator[RunningSimulator]:
    """The simulator of ``config`` on a loopback port, every request passing ``middleware``."""
    app = create_app(config)
    app.middlewares.append(middleware)
    runner, url = await serve_app(app, "127.0.0.1", 0, shutdown_timeout=2.0)
    try:
        yield RunningSimulator(runner, url)
    finally:
        await runner.cleanup()

STREAMING = "/v1.0/{project}/streaming"


class Dli:
    """One project's DLI calls with a token; each answers (HTTP status, parsed JSON body)."""

    def __init__(
        self, http: aiohttp.ClientSession, sim: RunningSimulator, project: str, token: str
    ) -> None:
        self.http = http
        self.sim = sim
        self.project = project
        self.base = sim.url + STREAMING.format(project=project)
        self.headers = {"X-Auth-Token": token, "Content-Type": "application/json"}

    def in_project(self, project: str) -> Dli:
        """The same calls for another project id."""
        return Dli(self.http, self.sim, project, self.headers["X-Auth-Token"])

    async def call(
        self, method: str, path: str, body: object = None, query: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """Any call under ``/v1.0/{project}/streaming``; ``body`` bytes are sent as they are."""
        data = body if isinstance(body, bytes) or body is None else orjson.dumps(body)
        async with self.http.request(
            method, self.base + path, data=data, params=query or {}, headers=self.headers
        ) as resp:
            assert resp.content_type == "application/json"
            return resp.status, orjson.loads(await resp.read())

    async def create(self, name: str, **fields: Any) -> int:
        """Create a job (queue q1 unless given); its id."""
        status, answer = await self.call("POST", "/flink-jobs", {"name": name, **QUEUE, **fields})
        assert status == 200, answer
        job_id: int = answer["job"]["job_id"]
        return job_id

    async def run(self, *ids: int, resume: bool = False) -> tuple[int, Any]:
        """``POST /jobs/run``."""
        return await self.call("POST", "/jobs/run", {"job_ids": ids, "resume_savepoint": resume})

    async def stop(self, *ids: int, savepoint: bool = False) -> tuple[int, Any]:
        """``POST /jobs/stop``."""
        return await self.call(
            "POST", "/jobs/stop", {"job_ids": ids, "trigger_savepoint": savepoint}
        )

    async def delete_batch(self, *ids: int) -> tuple[int, Any]:
        """``POST /jobs/delete``."""
        return await self.call("POST", "/jobs/delete", {"job_ids": ids})

    async def update(self, job_id: int, body: object) -> tuple[int, Any]:
        """``PUT /flink-jobs/{job_id}``."""
        return await self.call("PUT", f"/flink-jobs/{job_id}", body)

    async def detail(self, job_id: int) -> dict[str, Any]:
        """``job_detail`` of a job that exists."""
        status, answer = await self.call("GET", f"/jobs/{job_id}")
        assert status == 200, answer
        found: dict[str, Any] = answer["job_detail"]
        return found

    async def status(self, job_id: int) -> str:
        """The job's status as its detail shows it."""
        found: str = (await self.detail(job_id))["status"]
        return found

    async def listed(self, **query: str) -> dict[str, Any]:
        """``job_list`` of a list call that succeeds."""
        status, answer = await self.call("GET", "/jobs", query=query)
        assert status == 200, answer
        found: dict[str, Any] = answer["job_list"]
        return found

    async def stats(self, **query: str) -> dict[str, Any]:
        """``GET /_simulator/stats`` (no credential needed)."""
        async with self.http.get(self.sim.url + "/_simulator/stats", params=query) as resp:
            assert resp.status == 200
            found: dict[str, Any] = orjson.loads(await resp.read())
            return found


QUEUE = {"queue_name": "q1"}
OK = {"is_success": "true"}


def succeeded(answer: list[dict[str, str]]) -> list[bool]:
    """Which elements of a run, stop or delete answer succeeded (and that none names a job)."""
    assert all(set(item) == {"is_success", "message"} for item in answer), answer
    return [item["is_success"] == "true" for item in answer]
