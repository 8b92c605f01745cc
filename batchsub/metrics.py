"""Prometheus metrics and a health check for the daemons (``watch``, ``consume``), over HTTP.

``Metrics`` is a RunObserver: the run reports each job's result and each HTTP answer to it.
Each instance has its own CollectorRegistry (never the global one), so several can coexist.
``start_metrics_server`` serves ``GET /metrics`` (Prometheus text format) and ``GET /healthz``
(200 "ok" while the run goes on; 503 "ledger unavailable: REASON" while the ledger cannot be
reached, or "API unreachable: REASON" while the API cannot be reached or its job list read,
200 again once they answer; 503 "stopping" at the end) from the run's own event loop.

Metrics: ``batchsub_jobs_total{outcome}``, ``batchsub_request_seconds{call="create"|"list"}``,
``batchsub_rate`` (the limiter's rate in use, req/s; 0 = unlimited), with ``--start``/``--wait``
``batchsub_job_status_total{status}`` (jobs by the DLI status last seen when their start and
wait ended), ``batchsub_starts_total{start}`` (how each start ended) and
``batchsub_start_seconds`` (from DLI taking a start to the job first seen running),
``batchsub_throttled_total`` (429 answers), ``batchsub_ledger_up`` (0 during a ledger outage),
``batchsub_files_waiting`` (manifests in the drop folder not yet claimed, plus those in
processing/) and ``batchsub_files_stuck`` (files whose move out of processing/ failed and is
being retried; ``/healthz`` then answers 200 "degraded" with one line per file).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from batchsub.errors import ConfigError, one_line
from batchsub.http_server import serve_app
from batchsub.jobs import JobResult, Outcome
from batchsub.protocols import RateView

log = structlog.get_logger("batchsub.metrics")

_CALLS = ("create", "list")
_THROTTLED = 429


class Metrics:
    """The run's counters in a dedicated registry; implements ``RunObserver``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self.healthy = True
        self.ledger_problem: str | None = None  # why the ledger cannot be reached, if so
        self.api_problem: str | None = None  # the API cannot be reached or read: not healthy
        self.jobs = Counter(
            "batchsub_jobs", "Jobs by final outcome.", ["outcome"], registry=self.registry
        )
        self.request_seconds = Histogram(
            "batchsub_request_seconds",
            "Seconds from sending a request to its answer (or its failure).",
            ["call"],
            registry=self.registry,
        )
        self.rate = Gauge(
            "batchsub_rate", "Requests per second in use (0: unlimited).", registry=self.registry
        )
        self.throttled = Counter(
            "batchsub_throttled", "429 answers from the API.", registry=self.registry
        )
        self.ledger_up = Gauge(
            "batchsub_ledger_up",
            "1 while the ledger answers, 0 during an outage.",
            registry=self.registry,
        )
        self.ledger_up.set(1)
        self.files_waiting = Gauge(
            "batchsub_files_waiting",
            "Manifests in the drop folder not yet claimed, plus those being processed.",
            registry=self.registry,
        )
        self.files_stuck = Gauge(
            "batchsub_files_stuck",
            "Drop-folder files whose move out of processing/ failed and is being retried.",
            registry=self.registry,
        )
        self.job_status = Counter(
            "batchsub_job_status",
            "Jobs by the DLI status last seen once their start and wait ended.",
            ["status"],
            registry=self.registry,
        )
        self.starts = Counter(
            "batchsub_starts",
            "Jobs by how their start ended (started, active, not_started, start_failed, ...).",
            ["start"],
            registry=self.registry,
        )
        self.start_seconds = Histogram(
            "batchsub_start_seconds",
            "Seconds from DLI taking a start to the job first seen job_running.",
            buckets=(1, 2, 5, 10, 20, 30, 60, 120, 300, 600, float("inf")),
            registry=self.registry,
        )
        self.stuck: Callable[[], list[str]] = list  # one line per stuck file, for /healthz
        # Every series exists from the start, at zero; kept, so a job or an answer costs no
        # label lookup.
        self._jobs = {outcome: self.jobs.labels(outcome=outcome.value) for outcome in Outcome}
        self._seconds = {call: self.request_seconds.labels(call=call) for call in _CALLS}

    def track_files(self, count: Callable[[], int]) -> None:
        """Read ``batchsub_files_waiting`` from ``count`` at each scrape."""
        self.files_waiting.set_function(lambda: float(count()))

    def track_stuck(self, stuck: Callable[[], list[str]]) -> None:
        """Read ``batchsub_files_stuck`` and /healthz's list of stuck files from ``stuck``."""
        self.stuck = stuck
        self.files_stuck.set_function(lambda: float(len(stuck())))

    def on_start(self, limiter: RateView) -> None:
        """Read ``batchsub_rate`` from the run's limiter at each scrape."""
        self.rate.set_function(lambda: limiter.rate)

    def on_result(self, result: JobResult) -> None:
        """Count one job's final outcome."""
        self._jobs[result.outcome].inc()

    def on_lifecycle(self, result: JobResult) -> None:
        """Count a job's DLI status and start, and time its start, once they ended."""
        if result.status is not None:
            self.job_status.labels(status=result.status).inc()
        if result.start is not None:
            self.starts.labels(start=result.start).inc()
        if result.started_at is not None and result.running_at is not None:
            self.start_seconds.observe(max(0.0, result.running_at - result.started_at))

    def on_answer(self, call: str, seconds: float, status: int | None) -> None:
        """Time one request; count it as throttled if the answer was a 429."""
        series = self._seconds.get(call) or self.request_seconds.labels(call=call)
        series.observe(seconds)
        if status == _THROTTLED:
            self.throttled.inc()

    def on_ledger(self, problem: str | None) -> None:
        """The ledger became unavailable (why), or answers again (None): /healthz says so."""
        self.ledger_problem = problem
        self.ledger_up.set(0 if problem else 1)

    def on_api_state(self, problem: str | None) -> None:
        """Say so in ``/healthz`` while the API cannot be reached (the daemon keeps trying)."""
        self.api_problem = problem

    def render(self) -> bytes:
        """The registry in the Prometheus text format."""
        return generate_latest(self.registry)


class MetricsServer:
    """The running HTTP server; ``url`` is where it listens. Close it when the run ends."""

    def __init__(self, runner: web.AppRunner, url: str) -> None:
        self._runner = runner
        self.url = url

    async def close(self) -> None:
        """Stop listening and close connections."""
        await self._runner.cleanup()


def create_metrics_app(metrics: Metrics) -> web.Application:
    """The aiohttp app: ``/metrics`` and ``/healthz``."""

    async def healthz(_: web.Request) -> web.Response:
        if not metrics.healthy:
            return web.Response(status=503, text="stopping")
        if metrics.ledger_problem is not None:
            return web.Response(status=503, text=f"ledger unavailable: {metrics.ledger_problem}")
        if metrics.api_problem is not None:
            return web.Response(status=503, text=f"API unreachable: {metrics.api_problem}")
        if stuck := metrics.stuck():  # still working: new files are processed meanwhile
            head = f"degraded: {len(stuck)} file(s) stuck in processing/, moves retried"
            return web.Response(text="\n".join([head, *stuck]))
        return web.Response(text="ok")

    async def scrape(_: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", scrape)
    return app


async def start_metrics_server(metrics: Metrics, host: str, port: int) -> MetricsServer:
    """Serve ``metrics`` on host:port (0 picks a free port) in the running event loop."""
    try:
        runner, url = await serve_app(create_metrics_app(metrics), host, port, shutdown_timeout=1.0)
    except OSError as exc:
        raise ConfigError(
            f"--metrics-port {port}: cannot listen on {host}:{port}: {one_line(exc)}"
        ) from None
    log.info("metrics.serving", url=url)
    return MetricsServer(runner, url)


@contextlib.asynccontextmanager
async def serving(metrics: Metrics, host: str, port: int | None) -> AsyncIterator[str | None]:
    """Serve ``metrics`` on host:port while the block runs (its URL; None without a port).

    /healthz answers 503 "stopping" once the block is left, until the server is closed.
    """
    server = await start_metrics_server(metrics, host, port) if port is not None else None
    try:
        yield server.url if server else None
    finally:
        metrics.healthy = False
        if server is not None:
            await server.close()
