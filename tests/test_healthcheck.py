"""``batchsub healthcheck`` against a real metrics server, and where the daemon's port listens."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from batchsub.commands import healthcheck
from batchsub.commands._parser import build_parser
from batchsub.commands.watch import watch
from batchsub.errors import ConfigError
from batchsub.metrics import Metrics, MetricsServer, start_metrics_server
from batchsub.settings import load_settings
from batchsub.sources.dropfolder import DropFolderSource
from tests.process_support import free_port
from tests.run_support import settings_for
from tests.support import REPO, SimulatorFactory, eventually


@contextlib.asynccontextmanager
async def serving(metrics: Metrics) -> AsyncIterator[MetricsServer]:
    server = await start_metrics_server(metrics, "127.0.0.1", 0)
    try:
        yield server
    finally:
        await server.close()


def run_check(*argv: str) -> int:
    """``batchsub healthcheck ARGV`` as the CLI parses it, in this process."""
    args = build_parser(["healthcheck", *argv]).parse_args(["healthcheck", *argv])
    return healthcheck.main(load_settings({}), args)


async def test_healthy_is_0_stopping_is_1_and_nobody_listening_is_1(
    capsys: pytest.CaptureFixture[str],
) -> None:
    metrics = Metrics()
    async with serving(metrics) as server:
        url = server.url + "/healthz"
        assert await asyncio.to_thread(run_check, "--url", url) == 0
        assert f"{url}: HTTP 200 ok" in capsys.readouterr().out
        metrics.healthy = False
        assert await asyncio.to_thread(run_check, "--url", url) == 1
        assert f"{url}: HTTP 503 stopping" in capsys.readouterr().err
        # A path the app does not serve is not healthy either.
        assert await asyncio.to_thread(run_check, "--url", server.url + "/nope") == 1
    assert await asyncio.to_thread(run_check, "--url", url, "--timeout", "2") == 1
    assert "no answer" in capsys.readouterr().err


def test_a_missing_port_or_a_bad_url_is_1_never_2(capsys: pytest.CaptureFixture[str]) -> None:
    # A container runtime reserves exit code 2 of a health check.
    assert run_check() == 1
    assert "BATCHSUB_METRICS_PORT" in capsys.readouterr().err
    assert run_check("--url", "ftp://127.0.0.1/healthz") == 1


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("0.0.0.0", "http://127.0.0.1:9100/healthz"),
        ("::", "http://[::1]:9100/healthz"),
        ("127.0.0.1", "http://127.0.0.1:9100/healthz"),
        ("10.1.2.3", "http://10.1.2.3:9100/healthz"),
    ],
)
def test_the_default_url_is_the_daemon_of_the_same_settings(host: str, url: str) -> None:
    settings = load_settings({"metrics_host": host, "metrics_port": 9100})
    assert healthcheck.health_url(settings) == url
    with pytest.raises(ConfigError, match="no metrics port"):
        healthcheck.health_url(load_settings({"metrics_host": host}))


def test_it_imports_no_http_library_of_the_engine(tmp_path: Path) -> None:
    # It runs every 30 s in each container: the standard library only.
    body = (
        "import sys\n"
        "from batchsub.cli import main\n"
        "code = main(['healthcheck', '--url', 'http://127.0.0.1:1/healthz', '--timeout', '1'])\n"
        "heavy = [m for m in ('aiohttp', 'prometheus_client', 'rich') if m in sys.modules]\n"
        "print(code, heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", body],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
    )
    assert result.stdout.strip() == "1 []", result.stderr


def test_metrics_host_is_a_flag_of_watch_and_a_setting() -> None:
    args = build_parser(["watch"]).parse_args(["watch", "inbox", "--metrics-host", "0.0.0.0"])
    assert isinstance(args, argparse.Namespace) and args.metrics_host == "0.0.0.0"
    assert load_settings({}).metrics_host == "127.0.0.1"


@pytest.mark.parametrize("host", [None, "0.0.0.0"])
async def test_the_daemon_listens_on_loopback_unless_told(
    simulator: SimulatorFactory, tmp_path: Path, host: str | None
) -> None:
    sim = await simulator()
    port = free_port()
    overrides = {"metrics_port": port} | ({"metrics_host": host} if host else {})
    settings = settings_for(sim.url, tmp_path, **overrides)
    source = DropFolderSource(tmp_path / "inbox", settle_time=0.1, rescan_interval=0.5)
    source.prepare()
    with capture_logs() as logs:
        task = asyncio.create_task(watch(settings, source))
        try:
            await eventually(lambda: any(e["event"] == "watch.started" for e in logs))
            # The health check of the same settings finds it, whatever the host.
            url = healthcheck.health_url(settings)
            assert (await asyncio.to_thread(healthcheck.check, url, 5.0))[0]
        finally:
            source.stop()
            assert await asyncio.wait_for(task, 10) == 0
    started = next(e for e in logs if e["event"] == "watch.started")
    assert started["metrics"] == f"http://{host or '127.0.0.1'}:{port}"
