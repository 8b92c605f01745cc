"""The ``batchsub`` command line: argument parsing and wiring, nothing else.

Exit codes: 0 every job exists; 1 some manifest invalid, failed or unresolved; 2 a usage or
configuration error (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import secrets
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from batchsub import __version__
from batchsub.errors import BatchsubError, ConfigError
from batchsub.settings import Settings, load_settings

# Flags shared by every command that sends jobs; each maps onto a Settings field.
_SEND_FLAGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--endpoint", {"help": "DLI endpoint URL (default: https://dli.{region}.myhuaweicloud.com)"}),
    ("--region", {"help": "Huawei Cloud region, e.g. cn-north-4, to derive the endpoint"}),
    ("--project-id", {"help": "project ID (default: $HUAWEICLOUD_SDK_PROJECT_ID)"}),
    ("--ledger", {"help": "ledger: a SQLite file path (default: ./batchsub.db)"}),
    ("--rate", {"type": float, "help": "requests per second, 0 for no limit (default: 10)"}),
    ("--concurrency", {"type": int, "help": "requests in flight at most (default: 8)"}),
    ("--timeout", {"type": float, "help": "seconds to wait for one answer (default: 30)"}),
    ("--max-attempts", {"type": int, "help": "attempts per job before giving up (default: 10)"}),
    ("--job-deadline", {"type": float, "help": "seconds one job may take in all (default: 900)"}),
    (
        "--in-doubt-grace",
        {
            "type": float,
            "help": "seconds to wait after a lost answer before looking the job up (default: 5)",
        },
    ),
    ("--ca-file", {"type": Path, "help": "PEM file of a private CA for TLS"}),
    (
        "--log-format",
        {"choices": ["auto", "json", "console"], "help": "log format (default: auto)"},
    ),
    ("--log-level", {"choices": ["debug", "info", "warning", "error"], "help": "log level"}),
)


# Modules that add commands of their own: each has ``add_parser(commands)``, which registers
# its subcommands with ``handler=...`` (a ``(Settings, Namespace) -> int`` callable).
# Only the module of the command being run is imported: start-up time is part of every
# run's cost, and the queue and daemon modules pull in aio-pika, watchfiles, prometheus.
_COMMAND_MODULES: dict[str, str] = {
    "validate": "batchsub.ops_commands",
    "plan": "batchsub.ops_commands",
    "status": "batchsub.ops_commands",
    "report": "batchsub.ops_commands",
    "retry": "batchsub.ops_commands",
    "config": "batchsub.ops_commands",
    "watch": "batchsub.watch",
    "publish": "batchsub.queue_commands",
    "consume": "batchsub.queue_commands",
}
_BUILT_IN = frozenset({"run", "simulator"})


def add_send_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of every command that sends jobs (``run``, ``watch``, ``consume``)."""
    for flag, options in _SEND_FLAGS:
        parser.add_argument(flag, **options)


def _modules_for(argv: Sequence[str] | None) -> list[str]:
    """The command modules ``argv`` needs: its command's, or all of them (for --help)."""
    words = list(sys.argv[1:] if argv is None else argv)
    index = 0
    while index < len(words):
        word = words[index]
        if word == "--config":
            index += 2
            continue
        if not word.startswith("-"):
            if word in _BUILT_IN:
                return []
            if word in _COMMAND_MODULES:
                return [_COMMAND_MODULES[word]]
            break
        index += 1
    return list(dict.fromkeys(_COMMAND_MODULES.values()))


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The argument parser of every command."""
    parser = argparse.ArgumentParser(
        prog="batchsub",
        description="Submit Flink Jar job manifests to Huawei Cloud DLI in bulk, exactly once.",
    )
    parser.add_argument("--version", action="version", version=f"batchsub {__version__}")
    parser.add_argument(
        "--config", type=Path, help="TOML settings file (default: config/batchsub.toml)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="create every job of a directory of manifests")
    run.add_argument("directory", type=Path, help="directory of .json/.yaml/.yml manifests")
    add_send_flags(run)
    run.add_argument("--report", type=Path, help="write a JSON report of every job to this file")
    run.add_argument(
        "--simulator", action="store_true", help="start the built-in DLI simulator and send to it"
    )
    run.add_argument(
        "--progress", choices=["auto", "on", "off"], help="progress bar (default: auto)"
    )
    run.add_argument(
        "--dry-run", action="store_true", help="show what a run would do (as `plan`); send nothing"
    )

    sim = commands.add_parser("simulator", help="serve the built-in DLI simulator")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8080)
    sim.add_argument("--project-id", help="accept only this project id (default: any)")
    sim.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    sim.add_argument("--rate-limit", type=float, default=0.0, help="answer 429 over N req/s")
    sim.add_argument(
        "--fail-5xx", type=float, default=0.0, help="probability of a 5xx, not created"
    )
    sim.add_argument(
        "--drop-after-create",
        type=float,
        default=0.0,
        help="probability of a dropped connection after creating",
    )
    sim.add_argument(
        "--error-504-after-create",
        type=float,
        default=0.0,
        help="probability of a 504 after creating",
    )
    sim.add_argument(
        "--dli0999", type=float, default=0.0, help="probability of 400 DLI.0999, not created"
    )
    sim.add_argument("--duplicate-names", choices=["reject", "accept"], default="reject")
    sim.add_argument("--seed", type=int)
    sim.add_argument("--log-format", choices=["auto", "json", "console"])
    sim.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    for module in _modules_for(argv):
        importlib.import_module(module).add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = build_parser(argv).parse_args(argv)
    try:
        settings = load_settings(_flags(args), args.config)
        if args.command == "run" and args.dry_run:
            from batchsub.ops_commands import plan_command

            plan_args = argparse.Namespace(
                directory=args.directory, check_remote=False, json=False, all=False
            )
            return plan_command(settings, plan_args)
        if args.command == "run":
            from batchsub.runner import run_directory

            return asyncio.run(
                run_directory(settings, args.directory, args.report, simulator=args.simulator)
            )
        if args.command == "simulator":
            return _serve_simulator(settings, args)
        handler: Callable[[Settings, argparse.Namespace], int] = args.handler
        return handler(settings, args)
    except BatchsubError as exc:
        print(f"batchsub: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("batchsub: interrupted", file=sys.stderr)
        return 130


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    names = set(Settings.model_fields)
    return {key: value for key, value in vars(args).items() if key in names and value is not None}


def _serve_simulator(settings: Settings, args: argparse.Namespace) -> int:
    from batchsub.logs import configure_logging
    from batchsub.simulator import SimulatorConfig, serve_forever

    configure_logging(
        settings.log_format, settings.log_level or "info", interactive=sys.stderr.isatty()
    )
    config = simulator_config(settings, project_id=args.project_id)
    config.latency = args.latency
    config.rate_limit = args.rate_limit
    config.fail_5xx = args.fail_5xx
    config.drop_after_create = args.drop_after_create
    config.error_504_after_create = args.error_504_after_create
    config.dli0999 = args.dli0999
    config.duplicate_names = args.duplicate_names
    config.seed = args.seed
    if not isinstance(config, SimulatorConfig):  # pragma: no cover - narrows the type
        raise ConfigError("bad simulator config")

    async def serve() -> None:
        task = asyncio.ensure_future(serve_forever(config, args.host, args.port))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            pass

    try:
        asyncio.run(serve())
    except OSError as exc:
        raise ConfigError(
            f"simulator cannot listen on {args.host}:{args.port}: {exc.strerror or exc}"
        ) from None
    return 0


def simulator_config(settings: Settings, *, project_id: str | None) -> Any:
    """A simulator accepting the credentials found in the environment the client reads."""
    from batchsub.simulator import SimulatorConfig

    tokens = (
        frozenset({settings.auth_token.get_secret_value()}) if settings.auth_token else frozenset()
    )
    aksk = (
        {settings.ak.get_secret_value(): settings.sk.get_secret_value()}
        if settings.ak and settings.sk
        else {}
    )
    return SimulatorConfig(project_id=project_id, tokens=tokens, aksk=aksk)


def demo_token() -> str:
    """A throwaway token for ``run --simulator`` when no credential is set."""
    return "demo-" + secrets.token_hex(16)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
