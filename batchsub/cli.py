"""The ``batchsub`` command line: the parser and the dispatch to a command, nothing else.

Each command lives in its own module under ``batchsub.commands``, which says its exit codes.
Every command shares these: 2 for a usage or configuration error (one line on stderr, no
traceback), 130 when interrupted. Nothing imports this module but ``__main__``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

# First: the next import of structlog (via settings) skips rich, a good part of start-up
# (bench/results.md section 10).
from batchsub import __version__, structlog_without_rich  # noqa: F401
from batchsub.errors import BatchsubError
from batchsub.settings import Settings, load_settings

# The module of each command: its ``add_parser(commands)`` registers the subcommand with
# ``handler=...`` (a ``(Settings, Namespace) -> int`` callable). Only the module of the
# command being run is imported: start-up time is part of every
# run's cost, and the queue and daemon modules pull in aio-pika, watchfiles, prometheus.
_COMMAND_MODULES: dict[str, str] = {
    "run": "batchsub.commands.run",
    "validate": "batchsub.commands.validate",
    "plan": "batchsub.commands.plan",
    "status": "batchsub.commands.status",
    "report": "batchsub.commands.report",
    "retry": "batchsub.commands.retry",
    "config": "batchsub.commands.config",
    "watch": "batchsub.commands.watch",
    "publish": "batchsub.commands.queue",
    "consume": "batchsub.commands.queue",
    "simulator": "batchsub.commands.simulator",
    "healthcheck": "batchsub.commands.healthcheck",
    "auth": "batchsub.commands.auth",
}


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


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    names = set(Settings.model_fields)
    return {key: value for key, value in vars(args).items() if key in names and value is not None}


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
