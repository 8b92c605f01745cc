"""The parser of every command: which module holds each, and how they are registered.

Only the module of the command being run is imported (start-up time is part of every run's
cost, and the queue and daemon modules pull in aio-pika, watchfiles, prometheus); ``--help``
and ``batchsub completion`` load them all.

Every parser refuses abbreviations (``--rat 5`` is not ``--rate 5``), answers an unknown flag
with its own command's usage and the closest flag, and takes the global flags (``--config``,
``--log-format``, ``--log-level``) before or after the command. Each command's ``--help``
ends with its environment variables, exit codes and an example.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
import textwrap
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

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

# Flags every command takes, before or after its name: (flags, options).
GLOBAL_FLAGS: tuple[tuple[tuple[str, ...], dict[str, Any]], ...] = (
    (("--config",), {"type": Path, "help": "TOML settings file (default: config/batchsub.toml)"}),
    (
        ("--log-format",),
        {"choices": ["auto", "json", "console"], "help": "log format (default: auto)"},
    ),
    (("--log-level",), {"choices": ["debug", "info", "warning", "error"], "help": "log level"}),
)
_GLOBAL_DESTS = frozenset(options[0].lstrip("-").replace("-", "_") for options, _ in GLOBAL_FLAGS)

# The exit codes of each command (README, "Exit codes"); a command not named has _DEFAULT_EXIT.
_SENDING_EXIT = (
    "0 every job is as asked (created now or before); 1 some job invalid, failed, drifted, "
    "duplicated, held or unresolved, or no manifest at all; 2 a usage or configuration error, a "
    "credential the API refused, a report that could not be written; 130 stopped by SIGINT, "
    "143 by SIGTERM (after the drain; the report says interrupted: true)"
)
_DAEMON_EXIT = (
    "0 after a clean stop (SIGTERM, SIGINT), even if some jobs failed (they are filed with "
    "their reasons); 2 a setting, the ledger or a credential stopped it"
)
_DEFAULT_EXIT = "0 success; 2 a usage or configuration error (one line on stderr)"
EXIT_CODES: dict[str, str] = {
    "run": _SENDING_EXIT,
    "retry": _SENDING_EXIT,
    "apply": _SENDING_EXIT.replace("(created now or before)", "(created, or updated to match)"),
    "validate": "0 every manifest valid; 1 a problem, or no manifest at all; 2 a usage error",
    "plan": "0 nothing invalid; 1 a manifest invalid, or no manifest at all; "
    "2 a usage or configuration error",
    "status": "0 the ledger could be read (whatever its jobs); 2 it could not",
    "report": "0 the ledger could be read and written out; 2 it could not",
    "watch": _DAEMON_EXIT,
    "consume": _DAEMON_EXIT,
    "auth check": "0 the API accepted the credential; 2 it refused it or could not be asked",
    "healthcheck": "0 /healthz answered 200; 1 it did not (never 2: container runtimes reserve it)",
}
EXAMPLES: dict[str, str] = {
    "run": "batchsub run manifests --region cn-north-4 --report report.json",
    "retry": "batchsub retry --region cn-north-4 --report retry.json",
    "apply": "batchsub apply manifests --savepoint --start --wait --report apply.json",
    "validate": "batchsub validate manifests > problems.txt",
    "plan": "batchsub plan manifests --check-remote -o plain | grep -v already_created",
    "status": "batchsub status --ledger batchsub.db -o json | jq .outcomes",
    "report": "batchsub report --format csv --output jobs.csv",
    "config show": "batchsub config show --rate 5",
    "watch": "batchsub watch /srv/drop --metrics-port 9100 --log-format json",
    "publish": "batchsub publish manifests --amqp-url amqp://user@broker/ --queue batchsub",
    "consume": "batchsub consume --amqp-url amqp://user@broker/ --ledger postgresql://db/batchsub",
    "simulator": "batchsub simulator --port 8080",
    "healthcheck": "batchsub healthcheck --url http://127.0.0.1:9100/healthz",
    "auth check": "batchsub auth check --region cn-north-4",
    "completion": 'eval "$(batchsub completion bash)"',
}
# Flags named as a setting that only the flag sets (a filter, not where to send).
_FLAG_ONLY = frozenset({("status", "project_id"), ("report", "project_id")})
_CREDENTIAL_ENV = (
    "BATCHSUB_AUTH_TOKEN, BATCHSUB_IAM_USER/_DOMAIN/_PASSWORD(_FILE), "
    "HUAWEICLOUD_SDK_AK/_SK, HUAWEICLOUD_SDK_PROJECT_ID"
)


class Parser(argparse.ArgumentParser):
    """argparse without abbreviations, whose errors name the closest flag or command."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)
        self.is_command = False  # a subcommand's parser (set by build_parser)

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        parsed, extras = super().parse_known_args(args, namespace)
        if self.is_command and extras:
            # Said here, with this command's usage, rather than by the top-level parser.
            self.error(f"unrecognized arguments: {' '.join(extras)}{self._suggestion(extras)}")
        return parsed, extras

    def _suggestion(self, extras: Sequence[str]) -> str:
        known = [flag for flag in self._option_string_actions if flag.startswith("--")]
        for word in extras:
            if word.startswith("--"):
                close = difflib.get_close_matches(word.split("=", 1)[0], known, n=1, cutoff=0.6)
                if close:
                    return f" (did you mean {close[0]}?)"
        return ""

    def error(self, message: str) -> NoReturn:
        if "invalid choice" in message and "argument COMMAND" in message:
            message = self._command_suggestion(message)
        on_error = _ON_ERROR.get("hook")
        if on_error is not None:
            on_error(self, message)
        super().error(message)

    def _command_suggestion(self, message: str) -> str:
        word = message.split("invalid choice: ", 1)[-1].split(" ", 1)[0].strip("'")
        close = difflib.get_close_matches(word, list(_COMMAND_MODULES), n=1)
        return f"{message} (did you mean {close[0]}?)" if close else message


# What to do before argparse prints a usage error and exits 2 (cli: a JSON line, when asked).
_ON_ERROR: dict[str, Callable[[argparse.ArgumentParser, str], None]] = {}


def on_usage_error(hook: Callable[[argparse.ArgumentParser, str], None]) -> None:
    """Call ``hook(parser, message)`` before any usage error is printed."""
    _ON_ERROR["hook"] = hook


def _modules_for(argv: Sequence[str] | None) -> list[str]:
    """The command modules ``argv`` needs: its command's, or all of them (for --help)."""
    words = list(sys.argv[1:] if argv is None else argv)
    index = 0
    takes_value = {flags[0] for flags, _ in GLOBAL_FLAGS}
    while index < len(words):
        word = words[index]
        if word in takes_value:
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
    parser = Parser(
        prog="batchsub",
        description="Submit Flink Jar job manifests to Huawei Cloud DLI in bulk, exactly once.",
        epilog="exit codes: see each command's --help; 2 a usage or configuration error.\n"
        "example: batchsub validate manifests && batchsub run manifests --region cn-north-4",
    )
    parser.add_argument("--version", action="version", version=f"batchsub {__version__}")
    for flags, options in GLOBAL_FLAGS:
        parser.add_argument(*flags, **options)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    for module in _modules_for(argv):
        importlib.import_module(module).add_parser(commands)
    for path, sub in _commands(parser):
        _finish_command(sub, path)
    return parser


def _commands(parser: argparse.ArgumentParser, path: str = "") -> list[tuple[str, Parser]]:
    """Every (sub)command parser under ``parser``, with its words (``config show``)."""
    found: list[tuple[str, Parser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words = f"{path} {name}".strip()
                if isinstance(sub, Parser):
                    found.append((words, sub))
                found += _commands(sub, words)
    return found


def _finish_command(sub: Parser, path: str) -> None:
    """Global flags (which never undo one given before the command), and the epilog."""
    sub.is_command = not any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
    for flags, options in GLOBAL_FLAGS:
        if flags[0] not in sub._option_string_actions:
            sub.add_argument(*flags, **options)
    for action in sub._actions:
        if action.dest in _GLOBAL_DESTS:
            action.default = argparse.SUPPRESS
    if sub.is_command and sub.epilog is None:
        sub.epilog = _epilog(sub, path)


def _epilog(sub: argparse.ArgumentParser, path: str) -> str:
    from batchsub.settings import Settings

    fields = set(Settings.model_fields)
    env = sorted(
        "BATCHSUB_" + action.dest.upper()
        for action in sub._actions
        if action.dest in fields and action.option_strings and (path, action.dest) not in _FLAG_ONLY
    )
    lines = []
    if env:
        lines.append("environment: " + ", ".join(env) + " (a flag beats its variable)")
    dests = {a.dest for a in sub._actions}
    if "endpoint" in dests:
        lines.append("credentials: " + _CREDENTIAL_ENV)
    if "ledger" in dests:
        lines.append(
            "ledger: a SQLite file (default batchsub.db, one writer) or a postgresql:// URL "
            "(shared by workers on several hosts)"
        )
    lines.append("exit codes: " + EXIT_CODES.get(path, _DEFAULT_EXIT))
    if path in EXAMPLES:
        lines.append("example: " + EXAMPLES[path])
    return "\n".join(
        textwrap.fill(line, 79, subsequent_indent="  ", break_on_hyphens=False) for line in lines
    )
