"""The simulator with a fault of the test's own: a middleware in front of its handlers."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from batchsub.simulator import RunningSimulator, SimulatorConfig, create_app

Middleware = Any  # aiohttp's middleware type is private


@contextlib.asynccontextmanager
async def simulator_with(
    config: SimulatorConfig, middleware: Middleware
) -> AsyncIterator[RunningSimulator]:
    """The simulator of ``config`` on a loopback port, every request passing ``middleware``."""
    app = create_app(config)
    app.middlewares.append(middleware)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        host, port = runner.addresses[0][:2]
        yield RunningSimulator(runner, f"http://{host}:{port}")
    finally:
        await runner.cleanup()
