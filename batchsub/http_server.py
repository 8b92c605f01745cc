"""Starting an aiohttp app on a local port: the built-in simulator and the metrics endpoint."""

from __future__ import annotations

from aiohttp import web


async def serve_app(
    app: web.Application, host: str, port: int, *, shutdown_timeout: float
) -> tuple[web.AppRunner, str]:
    """Listen with ``app`` on host:port (0 picks a free port): its runner, and its URL.

    Whatever fails on the way (a port in use) leaves nothing open, and is raised as it is.
    """
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except BaseException:
        await runner.cleanup()
        raise
    bound_host, bound_port = runner.addresses[0][:2]
    url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
    return runner, f"http://{url_host}:{bound_port}"
