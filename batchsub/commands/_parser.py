"""The parser of every command: which module holds each, and how they are registered.

Only the module of the command being run is imported (start-up time is part of every run's
cost, and the queue and daemon modules pull in aio-pika, watchfiles, prometheus); ``--help``
and ``batchsub completion`` load them all.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from batchsub import __version__

# The module of each command: its ``add_parser(commands)`` registers the subcommand with
# ``handler=...`` (a ``(Settings, Namespace) -> int`` callable).
_COMMAND_MODULES: dict[str, str] = {
    "run": "batchsub.commands.run",
    "apply": "batchsub.commands.apply",
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
    "completion": "batchsub.commands.completion",
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
