"""Flags shared by several commands; each maps onto a ``Settings`` field of the same name."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

# The flags of every command that sends jobs, or says where they would go.
_SEND_FLAGS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("--endpoint", {"help": "DLI endpoint URL (default: https://dli.{region}.myhuaweicloud.com)"}),
    ("--region", {"help": "Huawei Cloud region, e.g. cn-north-4, to derive the endpoint"}),
    ("--project-id", {"help": "project ID (default: $HUAWEICLOUD_SDK_PROJECT_ID)"}),
    ("--iam-endpoint", {"help": "IAM URL of a password login (default: https://iam.{region}...)"}),
    ("--ledger", {"help": "ledger: a SQLite file or a postgresql:// URL (default: batchsub.db)"}),
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


def add_send_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of every command that sends jobs (``run``, ``watch``, ``consume``, ...)."""
    for flag, options in _SEND_FLAGS:
        parser.add_argument(flag, **options)


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """The flags of a one-shot send (``run``, ``retry``): its report, simulator and progress bar."""
    parser.add_argument("--report", type=Path, help="write a JSON report of every job to this file")
    parser.add_argument(
        "--simulator", action="store_true", help="start the built-in DLI simulator and send to it"
    )
    parser.add_argument(
        "--progress", choices=["auto", "on", "off"], help="progress bar (default: auto)"
    )


def add_start_flags(parser: argparse.ArgumentParser, *, waves: bool) -> None:
    """Start the jobs that exist, wait for them, and (``run``, ``retry``) roll out in waves."""
    parser.add_argument(
        "--start",
        action="store_true",
        default=None,
        help="start every job that exists and is not running (once; see --restart-stopped)",
    )
    parser.add_argument(
        "--resume-savepoint",
        action="store_true",
        default=None,
        help="start from the job's last savepoint (the run call's resume_savepoint)",
    )
    parser.add_argument(
        "--restart-stopped",
        action="store_true",
        default=None,
        help="start jobs that were stopped on purpose too",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        default=None,
        help="wait until every started job is healthy or failed (without --start: those"
        " already started)",
    )
    parser.add_argument(
        "--wait-timeout", type=float, help="seconds to wait for each job (default: 1200)"
    )
    parser.add_argument(
        "--healthy-for",
        type=float,
        help="seconds a job must run without a break to be healthy (default: 30)",
    )
    if not waves:
        return
    parser.add_argument(
        "--waves",
        metavar="LIST",
        help="roll out in waves, cumulative counts or percentages: 1,10%%,100%% (needs --start)",
    )
    parser.add_argument(
        "--max-failures",
        type=int,
        metavar="N",
        help="with --waves: hold the rest once more than N jobs failed (default: 0)",
    )
