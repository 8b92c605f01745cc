"""``batchsub simulator``: serve the built-in DLI simulator, with faults on request."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from typing import Any

from batchsub.errors import ConfigError, one_line
from batchsub.logs import configure_logging
from batchsub.settings import Settings
from batchsub.simulator.config import SimulatorConfig, simulator_config
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
    "--submit-fail": ("submit_fail", "probability that a started job ends job_submit_fail"),
    "--fail-after-run": (
        "fail_after_run",
        "probability that a started job runs, then ends job_running_exception",
    ),
    "--drop-after-run": ("drop_after_run", "probability of a dropped connection after a run"),
    "--error-504-after-run": ("error_504_after_run", "probability of a 504 after a run"),
    "--drop-after-stop": ("drop_after_stop", "probability of a dropped connection after a stop"),
    "--error-504-after-stop": ("error_504_after_stop", "probability of a 504 after a stop"),
    "--drop-after-update": (
        "drop_after_update",
        "probability of a dropped connection after an update (PUT)",
    ),
    "--error-504-after-update": (
        "error_504_after_update",
        "probability of a 504 after an update (PUT)",
    ),
}
# flag -> (SimulatorConfig field, help); each takes S or MIN-MAX seconds
_DELAYS: dict[str, tuple[str, str]] = {
    "--start-seconds": ("start_seconds", "job_submitting to job_running (default 1-2)"),
    "--savepoint-seconds": (
        "savepoint_seconds",
        "job_savepointing to job_canceling (default 0.5-1)",
    ),
    "--stop-seconds": ("stop_seconds", "job_canceling to job_cancel_success (default 0.5-1)"),
    "--fail-after-seconds": (
        "fail_after_seconds",
        "job_running to job_running_exception with --fail-after-run (default 2-5)",
    ),
}
# flag -> (SimulatorConfig field, choices, help); the first choice is the default
_MODES: dict[str, tuple[str, tuple[str, ...], str]] = {
    "--duplicate-names": ("duplicate_names", ("reject", "accept"), "a second job of one name"),
    "--run-running": ("run_running", ("reject", "accept"), "a run of a job already running"),
    "--update-running": (
        "update_running",
        ("reject", "accept"),
        "a PUT to a running job outside the in-place fields",
    ),
    "--unknown-job-ids": (
        "unknown_job_ids",
        ("element", "error"),
        "an unknown id in run/stop/delete: a failed element, or a 400 for the call",
    ),
    "--deleted-jobs": ("deleted_jobs", ("hidden", "listed"), "whether the list shows them"),
}


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability from 0 to 1, got {text!r}")
    return value


def _seconds_range(text: str) -> tuple[float, float]:
    low, _, high = text.partition("-")
    try:
        bounds = (float(low), float(high or low))
    except ValueError:
        bounds = (-1.0, -1.0)
    if not 0.0 <= bounds[0] <= bounds[1]:
        raise argparse.ArgumentTypeError(f"expected S or MIN-MAX seconds, got {text!r}")
    return bounds


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}")
    return int(text)


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
        sim.add_argument(flag, type=_probability, default=0.0, help=text)
    sim.add_argument("--slow-seconds", type=float, default=30.0, help="delay of a slow answer")
    for flag, (field, text) in _DELAYS.items():
        default = getattr(SimulatorConfig, field)
        sim.add_argument(flag, type=_seconds_range, default=default, help=text)
    for flag, (_, choices, text) in _MODES.items():
        sim.add_argument(flag, choices=choices, default=choices[0], help=text)
    sim.add_argument(
        "--max-job-ids", type=_positive, default=100, help="most job ids a batch call takes"
    )
    sim.add_argument(
        "--token-lifetime",
        type=float,
        default=24 * 3600.0,
        help="seconds an IAM token from POST /v3/auth/tokens is valid (default: 86400)",
    )
    sim.add_argument("--seed", type=int, help="seed of the fault draws and delays")
    sim.add_argument("--log-format", choices=["auto", "json", "console"])
    sim.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    sim.set_defaults(handler=main)


def main(settings: Settings, args: argparse.Namespace) -> int:
    """Serve until SIGINT or SIGTERM."""
    interactive = sys.stderr.isatty()
    configure_logging(settings.log_format, settings.log_level or "info", interactive=interactive)
    config = config_from_args(settings, args)

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
        reason = one_line(exc)
        raise ConfigError(f"simulator cannot listen on {args.host}:{args.port}: {reason}") from None
    return 0


def config_from_args(settings: Settings, args: argparse.Namespace) -> SimulatorConfig:
    """The simulator's config: credentials from the settings, the rest from the flags."""
    config = simulator_config(settings, project_id=args.project_id)
    config.latency = args.latency
    config.rate_limit = args.rate_limit
    fields = [field for field, _ in _FAULTS.values()]
    fields += [field for field, _ in _DELAYS.values()]
    fields += [field for field, _, _ in _MODES.values()]
    for field in (*fields, "slow_seconds", "max_job_ids", "token_lifetime", "seed"):
        setattr(config, field, getattr(args, field))
    return config
