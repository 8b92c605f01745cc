"""Running the simulator on a real socket: in-process for tests, or until cancelled for the CLI."""

from __future__ import annotations

import asyncio
from types import TracebackType

import structlog
from aiohttp import web

from batchsub.http_server import serve_app
from batchsub.simulator.app import STORE, create_app
from batchsub.simulator.config import SimulatorConfig
from batchsub.simulator.iam import IAM, IamState
from batchsub.simulator.store import JobStore

log = structlog.get_logger(__name__)

SHUTDOWN_TIMEOUT = 2.0  # seconds in-flight answers get when the simulator closes


class RunningSimulator:
    """A simulator listening on ``url``; ``store`` holds what it received. Close it when done."""

    def __init__(self, runner: web.AppRunner, url: str) -> None:
        self._runner = runner
        self.url = url
        self.store: JobStore = runner.app[STORE]
        self.iam: IamState = runner.app[IAM]  # token requests, issued tokens

    async def close(self) -> None:
        """Stop listening, end slow answers, close connections."""
        await self._runner.cleanup()

    async def __aenter__(self) -> RunningSimulator:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()


async def start_simulator(
    config: SimulatorConfig, host: str = "127.0.0.1", port: int = 0
) -> RunningSimulator:
    """Start a simulator on host:port (0 picks a free port) and log its URL."""
    app = create_app(config)
    runner, url = await serve_app(app, host, port, shutdown_timeout=SHUTDOWN_TIMEOUT)
    log.info(
        "simulator.started",
        url=url,
        auth="on" if config.auth_enabled else "off (no tokens or AK/SK configured)",
        project_id=config.project_id or "any",
        rate_limit=config.rate_limit or None,
    )
    return RunningSimulator(runner, url)


async def serve_forever(config: SimulatorConfig, host: str, port: int) -> None:
    """Serve until cancelled (the ``batchsub simulator`` command), then close cleanly."""
    sim = await start_simulator(config, host, port)
    try:
        await asyncio.Event().wait()
    finally:
        await sim.close()
        log.info("simulator.stopped", url=sim.url, jobs=len(sim.store.jobs))
