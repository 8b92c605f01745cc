"""Prometheus metrics and a health check for the daemons (``batchsub watch``), over HTTP.

``Metrics`` is a RunObserver: the run reports each job's result and each HTTP answer to it.
Each instance has its own CollectorRegistry (never the global one), so several can coexist.
``start_metrics_server`` serves ``GET /metrics`` (Prometheus text format) and ``GET /healthz``
(200 "ok" while the run goes on, 503 "stopping" after) from the run's own event loop.

Metrics: ``batchsub_jobs_total{outcome}``, ``batchsub_request_seconds{call="create"|"list"}``,
``batchsub_rate`` (the limiter's rate in use, req/s; 0 = unlimited),
``batchsub_throttled_total`` (429 answers), ``batchsub_files_waiting`` (manifests in the drop
folder not yet claimed, plus those in processing/) and ``batchsub_files_stuck`` (files whose
move out of processing/ failed and is being retried; ``/healthz`` then answers 200
"degraded" with one line per file).
"""

from __future__ import annotations

from collections.abc import Callable

import structlog
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from batchsub.errors import ConfigError
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

    def on_answer(self, call: str, seconds: float, status: int | None) -> None:
        """Time one request; count it as throttled if the answer was a 429."""
        series = self._seconds.get(call) or self.request_seconds.labels(call=call)
        series.observe(seconds)
        if status == _THROTTLED:
            self.throttled.inc()

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
            f"--metrics-port {port}: cannot listen on {host}:{port}: {exc.strerror or exc}"
        ) from None
    log.info("metrics.serving", url=url)
    return MetricsServer(runner, url)
