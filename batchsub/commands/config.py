"""``batchsub config show``: the merged settings (flags > env > file), secrets masked.

Each value says where it came from (flag, env, file, default); the header names the config
file in use, the endpoint, and the credential a command would use, with where it came from
and any other credential it beats (a token in the file wins over AK/SK in the environment).
Piped (or ``-o plain``), the settings are TOML lines, each with its source as a comment.
"""

from __future__ import annotations

import argparse
from typing import Any

import orjson

from batchsub.commands._flags import add_send_flags
from batchsub.errors import ConfigError
from batchsub.masking import mask_url
from batchsub.output import Format, Rows, add_output_flags, chosen_format, print_json
from batchsub.settings import (
    DEFAULT_CONFIG_FILE,
    Settings,
    config_file_in_use,
    setting_sources,
)
from batchsub.wiring import credential_in_use

# Each kind of credential, in the order build_auth prefers them, and the settings behind it.
_CREDENTIALS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("token", ("auth_token",)),
    ("IAM password", ("iam_user", "iam_domain", "iam_password", "iam_password_file")),
    ("AK/SK", ("ak", "sk")),
)


def add_parser(commands: Any) -> None:
    """Register ``config show`` with the CLI."""
    config = commands.add_parser("config", help="inspect the settings")
    config_commands = config.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    show = config_commands.add_parser("show", help="print the merged settings, secrets masked")
    add_send_flags(show)
    add_output_flags(show, "the settings")
    show.set_defaults(handler=config_show_command)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return orjson.dumps(str(value)).decode()  # a JSON string is a TOML basic string


def credentials_given(settings: Settings, sources: dict[str, str]) -> list[tuple[str, str]]:
    """Each kind of credential the settings hold, in the order of preference, with where
    it came from (``("token", "file")``); the first is the one in use."""
    found = []
    for kind, fields in _CREDENTIALS:
        present = [name for name in fields if getattr(settings, name, None)]
        if present:
            found.append((kind, "/".join(sorted({sources[name] for name in present}))))
    return found


def config_show_command(settings: Settings, args: argparse.Namespace) -> int:
    """``batchsub config show``: the merged settings (flags > env > file), secrets masked."""
    fmt = chosen_format(args)
    config_file = config_file_in_use(getattr(args, "config", None))
    flags = {name: getattr(args, name, None) for name in Settings.model_fields}
    sources = setting_sources(flags, config_file)
    shown = settings.masked()
    credential = credential_in_use(settings)
    given = credentials_given(settings, sources)
    if given:
        kind, where = given[0]
        words = _source_words(where, config_file)
        # A token's own description names its variable: say where this one really came from.
        if kind == "token":
            credential = f"token (auth_token from {words})"
        else:
            credential = f"{credential} (from {words})"
    ignored = [f"{kind} ({_source_words(where, config_file)})" for kind, where in given[1:]]
    if fmt is Format.JSON:
        print_json(
            {
                "config_file": str(config_file) if config_file else None,
                "credential": credential,
                "credentials_not_used": ignored,
                "settings": shown,
                "sources": sources,
            },
            indent=True,
        )
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
    if ignored:
        lines.append(f"# also set, not used: {', '.join(ignored)}")
    print("\n".join(lines))
    with Rows(fmt, ("setting", "value", "source"), plain=_toml_line, limit=10_000) as rows:
        for key, value in shown.items():
            rows.add((key, "(not set)" if value is None else _toml_value(value), sources[key]))
    return 0


def _source_words(where: str, config_file: Any) -> str:
    words = {"flag": "a flag", "env": "the environment", "file": f"config file {config_file}"}
    return " and ".join(words.get(part, part) for part in where.split("/"))


def _toml_line(cells: Any) -> str:
    """``key = value  # source``, or ``# key = (not set)`` (TOML, as a config file holds)."""
    key, value, source = cells
    if value == "(not set)":
        return f"# {key} = (not set)"
    return f"{key} = {value}  # {source}"
