"""The ``batchsub`` command line: the parser and the dispatch to a command, nothing else.

Each command lives in its own module under ``batchsub.commands``, which says its exit codes.
Every command shares these: 2 for a usage or configuration error (one line on stderr, no
traceback), 130 when interrupted. Nothing imports this module but ``__main__``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

# First: the next import of structlog (via settings) skips rich, a good part of start-up
# (bench/results.md section 10).
from batchsub import structlog_without_rich  # noqa: F401
from batchsub.commands._parser import build_parser
from batchsub.errors import BatchsubError
from batchsub.settings import Settings, load_settings


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
