"""Small real HTTP servers on loopback for the tests that need an API other than the simulator."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from batchsub.http_server import serve_app

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@contextlib.contextmanager
def unanswered_port() -> Iterator[int]:
    """A loopback port whose SYNs are dropped, as a firewall (or a wrong region's) would:
    a listener that never accepts, its one-slot backlog filled by a connection of our own."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port: int = listener.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):
            yield port


@dataclass
class Recorder:
    """What a server received: (method, path, headers) per request; the status of each answer."""

    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)

    def saw_header(self, name: str) -> bool:
        """Whether any request carried the header ``name``."""
        return any(name.lower() in (k.lower() for k in headers) for _, _, headers in self.requests)


@contextlib.asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[tuple[str, Recorder]]:
    """Serve every method and path with ``handler`` on 127.0.0.1; yields (URL, recorder)."""
    recorder = Recorder()

    async def record(request: web.Request) -> web.StreamResponse:
        recorder.requests.append((request.method, request.path, dict(request.headers)))
        response = await handler(request)
        recorder.statuses.append(response.status)
        return response

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner, url = await serve_app(app, "127.0.0.1", 0, shutdown_timeout=0.5)
    try:
        yield url, recorder
    finally:
        await runner.cleanup()


EMPTY_LIST = {"is_success": "true", "message": "", "job_list": {"total_count": 0, "jobs": []}}


def dli_list_or(other: Handler) -> Handler:
    """A DLI stand-in: the list call answers an empty project, every other call ``other``."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if is_list_call(request):
            return web.json_response(EMPTY_LIST)
        return await other(request)

    return handle


Override = Callable[[web.Request], web.StreamResponse | None]


@contextlib.asynccontextmanager
async def proxying(upstream: str, override: Override) -> AsyncIterator[tuple[str, Recorder]]:
    """A proxy to ``upstream`` on 127.0.0.1 that answers a request itself when ``override``
    gives a response (a gateway's HTML page, say) and forwards it unchanged otherwise."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:

        async def forward(request: web.Request) -> web.StreamResponse:
            own = override(request)
            if own is not None:
                return own
            async with session.request(
                request.method,
                upstream + request.path_qs,
                headers=request.headers,  # Host included: an AK/SK signature covers it
                data=await request.read(),
                allow_redirects=False,
            ) as answer:
                headers = {k: v for k, v in answer.headers.items() if k.lower() == "content-type"}
                return web.Response(status=answer.status, body=await answer.read(), headers=headers)

        async with serving(forward) as served:
            yield served


def is_list_call(request: web.Request) -> bool:
    """Whether the request is DLI's job-list call."""
    return request.method == "GET" and request.path.endswith("/streaming/jobs")
