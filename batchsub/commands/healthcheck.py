"""``batchsub healthcheck [--url URL]``: exit 0 when a daemon's ``/healthz`` answers 200, else 1.

For container health checks: the slim image has no curl, so this asks with the standard
library only (nothing of aiohttp or the engine is imported). Without ``--url`` it asks the
daemon of the same settings: ``metrics_host`` (loopback when it listens on every address) and
``metrics_port``, which the image sets through ``BATCHSUB_METRICS_*``.
"""

from __future__ import annotations

import argparse
import http.client
import sys
import urllib.error
import urllib.request
from typing import Any

from batchsub.errors import ConfigError
from batchsub.logs import say
from batchsub.settings import Settings

DEFAULT_TIMEOUT = 5.0
# No proxy: a container's HTTP_PROXY must not carry a loopback health check elsewhere.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_EVERY_ADDRESS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def add_parser(commands: Any) -> None:
    """Register ``healthcheck`` with the CLI."""
    check: argparse.ArgumentParser = commands.add_parser(
        "healthcheck", help="exit 0 if a running daemon's /healthz answers 200, else 1"
    )
    check.add_argument(
        "--url",
        help="health URL (default: http://{metrics_host}:{metrics_port}/healthz of the settings)",
    )
    check.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        dest="check_timeout",
        help=f"seconds to wait for the answer (default: {DEFAULT_TIMEOUT:g})",
    )
    check.set_defaults(handler=main)


def health_url(settings: Settings) -> str:
    """The ``/healthz`` URL of the daemon these settings describe."""
    if settings.metrics_port is None:
        raise ConfigError(
            "healthcheck: no metrics port: pass --url or set BATCHSUB_METRICS_PORT "
            "(the port the daemon serves /healthz on)"
        )
    host = _EVERY_ADDRESS.get(settings.metrics_host, settings.metrics_host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.metrics_port}/healthz"


def check(url: str, timeout: float) -> tuple[bool, str]:
    """Whether ``url`` answers 200, and a few words saying what it answered."""
    try:
        with _OPENER.open(url, timeout=timeout) as response:
            body = response.read(200).decode("utf-8", "replace").strip()
            return response.status == 200, f"HTTP {response.status} {body}".strip()
    except urllib.error.HTTPError as exc:
        body = exc.read(200).decode("utf-8", "replace").strip()
        return False, f"HTTP {exc.code} {body}".strip()
    except (urllib.error.URLError, http.client.HTTPException, OSError) as exc:
        reason = getattr(exc, "reason", None) or exc
        return False, f"no answer: {reason}"


def main(settings: Settings, args: argparse.Namespace) -> int:
    """Entry point of ``batchsub healthcheck``: 0 healthy, 1 not (one line either way).

    Never 2, even for a setting: a container runtime reserves exit code 2 of a health check.
    """
    try:
        url = args.url or health_url(settings)
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"healthcheck: --url must start with http:// or https://: {url}")
    except ConfigError as exc:
        say("error", str(exc))
        return 1
    healthy, what = check(url, args.check_timeout)
    print(f"batchsub healthcheck: {url}: {what}", file=sys.stdout if healthy else sys.stderr)
    return 0 if healthy else 1
