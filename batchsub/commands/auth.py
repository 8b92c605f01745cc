"""``batchsub auth check``: verify the configured credential with one harmless call.

The call is the list call with ``limit=1``: it creates nothing, reads one job at most, and is
refused exactly as a create would be for a wrong credential or project. The credential is the
one a run would use (token, else IAM password, else AK/SK); the line printed names it.
Exit 0 when the API accepted it, 2 when it did not or could not be asked (one line on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from batchsub.commands._flags import add_send_flags
from batchsub.logs import configure_command_logging
from batchsub.masking import mask_url
from batchsub.output import Format, add_output_flags, chosen_format, print_json
from batchsub.settings import Settings
from batchsub.wiring import project_id_for, remote_api


def add_parser(commands: Any) -> None:
    """Register ``auth check`` with the CLI."""
    auth: argparse.ArgumentParser = commands.add_parser("auth", help="check the credential")
    actions = auth.add_subparsers(dest="auth_command", required=True, metavar="ACTION")
    check = actions.add_parser(
        "check", help="verify the configured credential with one list call (limit 1)"
    )
    add_send_flags(check)
    add_output_flags(check, "the answer")
    check.set_defaults(handler=check_command)


def check_command(settings: Settings, args: argparse.Namespace) -> int:
    """Entry point of ``batchsub auth check``: 0 accepted, 2 refused or unreachable."""
    project_id = project_id_for(settings, simulator=False)
    configure_command_logging(settings, quiet=True)
    answer = asyncio.run(check_credential(settings, project_id))
    if chosen_format(args) is Format.JSON:
        print_json(answer)
    else:
        print(_ok_line(answer))
    return 0


async def verify(settings: Settings, project_id: str) -> str:
    """One list call of ``limit=1`` with the credential in use; the line saying it worked.

    Raises ConfigError (one line naming the credential and the fix) when it did not.
    """
    return _ok_line(await check_credential(settings, project_id))


def _ok_line(answer: dict[str, Any]) -> str:
    return (
        f"credential OK: {answer['credential']} may call project {answer['project_id']} at "
        f"{answer['endpoint']} ({answer['jobs']} Flink Jar jobs there)"
    )


async def check_credential(settings: Settings, project_id: str) -> dict[str, Any]:
    """The list call of ``verify``, its answer as ``auth check -o json`` prints it."""
    async with remote_api(settings, project_id) as api:
        page = await api.caller.call(
            "auth check", lambda: api.client.list_page(name=None, offset=0, limit=1)
        )
        target = api.target
        return {
            "ok": True,
            "credential": target.auth.describe(),
            "project_id": project_id,
            "endpoint": mask_url(target.endpoint),
            "jobs": page.total_count,
        }
