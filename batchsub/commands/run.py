"""``batchsub run DIR``: create every job of a directory of manifests, exactly once.

With ``--start`` every job that exists is started after its create (``--wait``: and waited
for until healthy; ``--waves``: a wave at a time), see ``batchsub.lifecycle.rollout``.

Exit codes: 0 every job exists (created now or before; with ``--start``/``--wait``, started
and healthy); 1 some manifest invalid, failed, drifted, duplicated or unresolved, a start
failed or unconfirmed, a job not healthy within ``--wait-timeout``, or jobs held; 2 a usage
or configuration error, a credential the API refused, or a report that could not be written
(one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from batchsub.commands._flags import add_run_flags, add_send_flags, add_start_flags
from batchsub.settings import Settings


def add_parser(commands: Any) -> None:
    """Register ``run`` with the CLI."""
    run: argparse.ArgumentParser = commands.add_parser(
        "run", help="create every job of a directory of manifests"
    )
    run.add_argument("directory", type=Path, help="directory of .json/.yaml/.yml manifests")
    add_send_flags(run)
    add_run_flags(run)
    add_start_flags(run, waves=True)
    run.add_argument(
        "--dry-run", action="store_true", help="show what a run would do (as `plan`); send nothing"
    )
    run.add_argument(
        "--parse-workers",
        type=int,
        help="processes that read and parse manifests beside the sender; 0: none (default: 1)",
    )
    run.set_defaults(handler=run_command)


def run_command(settings: Settings, args: argparse.Namespace) -> int:
    """``batchsub run DIR`` (or, with ``--dry-run``, ``batchsub plan DIR``)."""
    if args.dry_run:
        from batchsub.commands.plan import plan_command

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
