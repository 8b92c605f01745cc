"""``batchsub simulator``: serve the built-in DLI simulator, with faults on request."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

from batchsub.errors import ConfigError
from batchsub.logs import configure_logging
from batchsub.settings import Settings
from batchsub.simulator.config import simulator_config
from batchsub.simulator.server import serve_forever

# flag -> (SimulatorConfig field, help)
_FAULTS: dict[str, tuple[str, str]] = {
    "--fail-5xx": ("fail_5xx", "probability of a 5xx before creating (not created)"),
    "--dli0999": ("dli0999", "probability of 400 DLI.0999 before creating (not created)"),
    "--drop-after-create": (
        "drop_after_create",
        "probability of a dropped connection after creating",
    ),
    "--error-504-after-create": ("error_504_after_create", "probability of a 504 after creating"),
    "--slow-after-create": (
        "slow_after_create",
        "probability of an answer delayed by --slow-seconds after creating",
    ),
    "--dli0999-after-create": (
        "dli0999_after_create",
        "probability of 400 DLI.0999 after creating",
    ),
}


def add_parser(commands: Any) -> None:
    """Register ``simulator``."""
    sim: argparse.ArgumentParser = commands.add_parser(
        "simulator", help="serve the built-in DLI simulator"
    )
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8080)
    sim.add_argument("--project-id", help="accept only this project id (default: any)")
    sim.add_argument(
        "--latency", type=float, default=0.0, help="seconds from a request's arrival to its answer"
    )
    sim.add_argument("--rate-limit", type=float, default=0.0, help="answer 429 over N req/s")
    for flag, (_, text) in _FAULTS.items():
        sim.add_argument(flag, type=float, default=0.0, help=text)
    sim.add_argument("--slow-seconds", type=float, default=30.0, help="delay of a slow answer")
    sim.add_argument("--duplicate-names", choices=["reject", "accept"], default="reject")
    sim.add_argument(
        "--token-lifetime",
        type=float,
        default=24 * 3600.0,
        help="seconds an IAM token from POST /v3/auth/tokens is valid (default: 86400)",
    )
    sim.add_argument("--seed", type=int, help="seed of the fault draws")
    sim.add_argument("--log-format", choices=["auto", "json", "console"])
    sim.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    sim.set_defaults(handler=main)


def main(settings: Settings, args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM."""
    interactive = sys.stderr.isatty()
    configure_logging(settings.log_format, settings.log_level or "info", interactive=interactive)
    config = simulator_config(settings, project_id=args.project_id)
    config.latency = args.latency
    config.rate_limit = args.rate_limit
    for field, _ in _FAULTS.values():
        setattr(config, field, getattr(args, field))
    config.slow_seconds = args.slow_seconds
    config.duplicate_names = args.duplicate_names
    config.token_lifetime = args.token_lifetime
    config.seed = args.seed

    async def serve() -> None:
        task = asyncio.ensure_future(serve_forever(config, args.host, args.port))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await task

    try:
        asyncio.run(serve())
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"simulator cannot listen on {args.host}:{args.port}: {reason}") from None
    return 0
