"""The ``batchsub`` command line: argument parsing and wiring, nothing else.

Exit codes: 0 every job exists; 1 some manifest invalid, failed or unresolved; 2 a usage or
configuration error (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# First: the next import of structlog (via settings) skips rich, ~100 ms of start-up.
from batchsub import __version__, structlog_without_rich  # noqa: F401
from batchsub.errors import BatchsubError
from batchsub.settings import Settings, load_settings

# Flags shared by every command that sends jobs; each maps onto a Settings field.
_SEND_FLAGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--endpoint", {"help": "DLI endpoint URL (default: https://dli.{region}.myhuaweicloud.com)"}),
    ("--region", {"help": "Huawei Cloud region, e.g. cn-north-4, to derive the endpoint"}),
    ("--project-id", {"help": "project ID (default: $HUAWEICLOUD_SDK_PROJECT_ID)"}),
    ("--iam-endpoint", {"help": "IAM URL of a password login (default: https://iam.{region}...)"}),
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
    (
        "--lease",
        {
            "type": float,
            "help": "seconds a worker's claim on a job lasts in a PostgreSQL ledger"
            " (default: 2 x timeout + 10)",
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
    "simulator": "batchsub.simulator.command",
    "healthcheck": "batchsub.healthcheck",
    "auth": "batchsub.auth_check",
    "completion": "batchsub.completion",
}
_BUILT_IN = frozenset({"run"})


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
    run.add_argument(
        "--parse-workers",
        type=int,
        help="processes that read and parse manifests beside the sender; 0: none (default: 1)",
    )
    run.set_defaults(handler=_run_command)

    for module in _modules_for(argv):
        importlib.import_module(module).add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    args = build_parser(argv).parse_args(argv)
    try:
        settings = load_settings(_flags(args), args.config)
        handler: Callable[[Settings, argparse.Namespace], int] = args.handler
        return handler(settings, args)
    except BatchsubError as exc:
        print(f"batchsub: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("batchsub: interrupted", file=sys.stderr)
        return 130


def _run_command(settings: Settings, args: argparse.Namespace) -> int:
    """``batchsub run DIR`` (or, with ``--dry-run``, ``batchsub plan DIR``)."""
    if args.dry_run:
        from batchsub.ops_commands import plan_command

        plan_args = argparse.Namespace(
            directory=args.directory, check_remote=False, json=False, all=False
        )
        return plan_command(settings, plan_args)
    from batchsub import eventloop
    from batchsub.runner import run_directory

    return eventloop.run(
        run_directory(settings, args.directory, args.report, simulator=args.simulator),
        settings.event_loop,
    )


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    names = set(Settings.model_fields)
    return {key: value for key, value in vars(args).items() if key in names and value is not None}


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
