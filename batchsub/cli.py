"""The ``batchsub`` command line: the parser and the dispatch to a command, nothing else.

Each command lives in its own module under ``batchsub.commands``; its exit codes are in its
``--help`` and in the README. Every command shares these: 2 for a usage or configuration
error (one line on stderr, a JSON line under ``--log-format json``, no traceback), 130 when
interrupted. Nothing imports this module but ``__main__``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

# First: the next import of structlog (via settings) skips rich, a good part of start-up
# (bench/results.md section 10).
from batchsub import structlog_without_rich  # noqa: F401
from batchsub.commands._parser import build_parser, on_usage_error
from batchsub.errors import BatchsubError
from batchsub.logs import say, set_json_lines
from batchsub.output import guard_stdout
from batchsub.settings import Settings, load_settings, requested_log_format

EXIT_USAGE = 2
EXIT_SIGINT = 130


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    guard_stdout()
    words = list(sys.argv[1:] if argv is None else argv)
    on_usage_error(lambda parser, message: _usage_error(words, parser, message))
    parser = build_parser(words)
    args = parser.parse_args(words)
    if args.command is None:  # ``batchsub`` alone: what it can do
        parser.print_help()
        return 0
    try:
        set_json_lines(requested_log_format(getattr(args, "log_format", None)) == "json")
        settings = load_settings(_flags(args), getattr(args, "config", None))
        set_json_lines(settings.log_format == "json")
        handler: Callable[[Settings, argparse.Namespace], int] = args.handler
        return handler(settings, args)
    except BatchsubError as exc:
        say("error", str(exc))
        return EXIT_USAGE
    except KeyboardInterrupt:
        say("error", "interrupted")
        return EXIT_SIGINT


def _usage_error(words: list[str], parser: argparse.ArgumentParser, message: str) -> None:
    """Under ``--log-format json``, a usage error is one JSON line too (then exit 2)."""
    flag = _flag_value(words, "--log-format")
    try:
        wanted = requested_log_format(flag)
    except BatchsubError:
        wanted = flag or "auto"
    if wanted == "json":
        set_json_lines(True)
        say("error", f"{parser.prog}: {message}")
        raise SystemExit(EXIT_USAGE)


def _flag_value(words: list[str], flag: str) -> str | None:
    for index, word in enumerate(words):
        if word == flag and index + 1 < len(words):
            return words[index + 1]
        if word.startswith(flag + "="):
            return word.split("=", 1)[1]
    return None


def _flags(args: argparse.Namespace) -> dict[str, Any]:
    names = set(Settings.model_fields)
    return {key: value for key, value in vars(args).items() if key in names and value is not None}


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
