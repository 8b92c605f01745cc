"""``batchsub watch DIR``: a daemon that sends every manifest dropped into a folder.

It processes what is already in DIR, then every manifest that arrives, until SIGTERM or SIGINT
(the drop-folder protocol is in ``batchsub.sources.dropfolder``). The first signal stops
claiming files, lets requests in flight finish within ``--drain-timeout`` and leaves the rest in
DIR; a second one stops at once (the ledger and ``processing/`` recovery still lose nothing).

Exit codes: 0 after a clean stop, even if some files failed (they are in ``DIR/failed/`` with
their reasons); 2 when a setting or credential stopped it (the API refused the credential,
the ledger is in use, DIR is unusable). Logs are JSON lines unless ``--log-format console``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import structlog

from batchsub import eventloop
from batchsub.commands._flags import add_send_flags, add_start_flags
from batchsub.commands.apply import add_apply_flags, applying
from batchsub.logs import configure_logging
from batchsub.metrics import Metrics, serving
from batchsub.protocols import Source
from batchsub.report import RunAccount
from batchsub.runner import daemon_exit_code, run_source
from batchsub.settings import Settings
from batchsub.sources.dropfolder import DropFolderSource

log = structlog.get_logger("batchsub.watch")


def add_parser(commands: Any) -> None:
    """Register ``watch`` with the CLI (``commands`` is the argparse subparsers action)."""
    watch: argparse.ArgumentParser = commands.add_parser(
        "watch", help="send every manifest dropped into a folder, until SIGTERM"
    )
    watch.add_argument("directory", type=Path, metavar="DIR", help="the drop folder")
    add_send_flags(watch)
    add_start_flags(watch, waves=False)
    watch.add_argument(
        "--settle-time",
        type=float,
        help="seconds a file must stay unchanged before it is read (default: 1)",
    )
    watch.add_argument(
        "--rescan-interval",
        type=float,
        help="seconds between full rescans besides filesystem events (default: 30)",
    )
    watch.add_argument(
        "--poll",
        action="store_true",
        default=None,
        help="poll for changes instead of inotify (network filesystems)",
    )
    watch.add_argument("--metrics-port", type=int, help="serve /metrics and /healthz on this port")
    watch.add_argument(
        "--metrics-host", help="address the metrics port listens on (default: 127.0.0.1)"
    )
    watch.add_argument(
        "--drain-timeout",
        type=float,
        help="seconds in-flight requests get to finish after SIGTERM (default: 30)",
    )
    watch.add_argument("--report", type=Path, help="write a JSON report of every job on exit")
    add_apply_flags(watch)
    watch.add_argument(
        "--simulator", action="store_true", help="start the built-in DLI simulator and send to it"
    )
    watch.set_defaults(handler=main)


def main(settings: Settings, args: argparse.Namespace) -> int:
    """Entry point of ``batchsub watch``; returns the exit code."""
    fmt = "console" if settings.log_format == "console" else "json"
    configure_logging(
        fmt,
        settings.log_level or "info",
        interactive=sys.stderr.isatty(),
        hidden=settings.secret_values(),
    )
    source = source_for(settings, args.directory)
    return eventloop.run(
        watch(
            settings,
            source,
            report=args.report,
            simulator=bool(args.simulator),
            apply=args.apply,
            savepoint=args.savepoint,
        ),
        settings.event_loop,
    )


def source_for(settings: Settings, directory: Path) -> DropFolderSource:
    """The drop folder as the settings describe it, created and recovered (ConfigError if not)."""
    source = DropFolderSource(
        directory,
        settle_time=settings.settle_time,
        rescan_interval=settings.rescan_interval,
        poll=settings.poll,
    )
    source.prepare()
    return source


async def watch(
    settings: Settings,
    source: DropFolderSource,
    *,
    report: Path | None = None,
    simulator: bool = False,
    metrics: Metrics | None = None,
    apply: bool = False,
    savepoint: bool = False,
) -> int:
    """Run the daemon until a signal (or ``source.stop()``); 0, or 2 if the run failed.

    ``apply``: a changed manifest of a created job updates it (``commands.apply``)."""
    account = RunAccount(report)
    sent: Source = source
    if apply:
        sent, account = applying(settings, source, report, savepoint=savepoint)
    metrics = metrics or Metrics()
    metrics.track_files(source.files_waiting)
    metrics.track_stuck(source.stuck_files)
    async with serving(metrics, settings.metrics_host, settings.metrics_port) as url:
        log.info(
            "watch.started",
            directory=str(source.directory),
            settle_time=settings.settle_time,
            rescan_interval=settings.rescan_interval,
            poll=settings.poll,
            drain_timeout=settings.drain_timeout,
            metrics=url,
        )
        try:
            code = await run_source(
                settings, sent, account, simulator=simulator, endless=True, observer=metrics
            )
        finally:
            await source.close()
    log.info("watch.stopped", directory=str(source.directory), files_left=source.files_waiting())
    # A failed file is filed under failed/ with its reason: not a failure of the daemon.
    return daemon_exit_code(code)
