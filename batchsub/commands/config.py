"""``batchsub config show``: the merged settings (flags > env > file), secrets masked.

Also names the config file in use, the endpoint and the credential a command would use.
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from batchsub.commands._flags import add_send_flags
from batchsub.errors import ConfigError
from batchsub.masking import mask_url
from batchsub.settings import DEFAULT_CONFIG_FILE, Settings, config_file_in_use
from batchsub.wiring import credential_in_use


def add_parser(commands: Any) -> None:
    """Register ``config show`` with the CLI."""
    config = commands.add_parser("config", help="inspect the settings")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_commands.add_parser("show", help="print the merged settings, secrets masked")
    add_send_flags(show)
    show.add_argument("--json", action="store_true", help="print the settings as JSON")
    show.set_defaults(handler=config_show_command)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(str(value)).decode()  # a JSON string is a TOML basic string


def config_show_command(settings: Settings, args: argparse.Namespace) -> int:
    """``batchsub config show``: the merged settings (flags > env > file), secrets masked."""
    config_file = config_file_in_use(args.config)
    shown = settings.masked()
    credential = credential_in_use(settings)
    if args.json:
        out = {
            "config_file": str(config_file) if config_file else None,
            "credential": credential,
            "settings": shown,
        }
        print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode())
        return 0
    origin = str(config_file) if config_file else f"none ({DEFAULT_CONFIG_FILE} not found)"
    lines = [
        f"# config file: {origin}",
        "# precedence: flags > BATCHSUB_* environment > config file > defaults",
    ]
    try:
        lines.append(f"# endpoint in use: {mask_url(settings.resolved_endpoint())}")
    except ConfigError as exc:
        lines.append(f"# endpoint in use: none ({exc})")
    lines.append(f"# credential in use: {credential}")
    for key, value in shown.items():
        lines.append(f"# {key} = (not set)" if value is None else f"{key} = {_toml_value(value)}")
    print("\n".join(lines))
    return 0
