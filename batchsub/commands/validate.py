"""``batchsub validate DIR``: check every manifest offline, as ``run`` would read it.

Never opens a ledger nor sends anything. Exit codes: 0 every manifest valid, 1 any problem
(a bad field, a file that cannot be read or parsed, a name defined twice) or no manifest at
all, 2 a usage error. Output by ``batchsub.output``: piped, one ``path: field: message`` line
per problem (the totals on stderr).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from batchsub.commands._tables import plural
from batchsub.jobs import InvalidManifest
from batchsub.logs import say
from batchsub.output import Format, Rows, add_output_flags, chosen_format, note, print_json
from batchsub.output import problem_line as plain_problem
from batchsub.settings import Settings
from batchsub.sources.directory import DirectorySource


def add_parser(commands: Any) -> None:
    """Register ``validate`` with the CLI."""
    validate = commands.add_parser("validate", help="check every manifest offline")
    validate.add_argument("directory", type=Path, help="directory of .json/.yaml/.yml manifests")
    add_output_flags(validate, "the problems")
    validate.set_defaults(handler=validate_command)


@dataclass(frozen=True, slots=True)
class Problem:
    """One invalid manifest or job: its file, its job (name or list index) and what is wrong."""

    file: str
    job: str | None
    problem: str
    source: str = ""  # the file, with #index for a job of a list file

    @classmethod
    def of(cls, item: InvalidManifest) -> Problem:
        """The problem an InvalidManifest describes, without the source prefix in its text."""
        file, index = split_source(item.source)
        job = item.name or (f"#{index}" if index is not None else None)
        return cls(file, job, item.error.removeprefix(f"{item.source}: "), item.source)


@dataclass(slots=True)
class Validation:
    """What ``validate`` found: manifest files read, valid jobs, and every problem."""

    manifests: int = 0
    valid: int = 0
    problems: list[Problem] = dataclasses.field(default_factory=list)


def split_source(source: str) -> tuple[str, int | None]:
    """``"dir/a.yaml#2"`` -> ``("dir/a.yaml", 2)``; a source without an index -> (source, None)."""
    file, sep, index = source.rpartition("#")
    if sep and index.isdigit():
        return file, int(index)
    return source, None


async def validate_directory(directory: Path) -> Validation:
    """Read every manifest under ``directory`` (as ``run`` would, duplicate names included)."""
    found = Validation()
    last_file: str | None = None
    async for item in DirectorySource(directory).items():
        file, _ = split_source(item.source)
        if file != last_file:  # items arrive file by file, in path order
            found.manifests += 1
            last_file = file
        if isinstance(item, InvalidManifest):
            found.problems.append(Problem.of(item))
        else:
            found.valid += 1
    return found


def validate_command(settings: Settings, args: argparse.Namespace) -> int:
    """``batchsub validate DIR``: 0 when every manifest is valid, 1 otherwise."""
    fmt = chosen_format(args)
    found = asyncio.run(validate_directory(args.directory))
    if fmt is Format.JSON:
        print_json(
            {
                "manifests": found.manifests,
                "valid": found.valid,
                "problems": [dataclasses.asdict(p) for p in found.problems],
            }
        )
    else:
        with Rows(fmt, ("file", "job", "problem"), plain=_problem_line) as rows:
            for p in found.problems:
                rows.add((p.file, p.job, p.problem, p.source))
        note(
            fmt,
            f"{plural(found.manifests, 'manifest')}, {plural(found.valid, 'job')} valid, "
            f"{plural(len(found.problems), 'problem')}",
        )
    if found.manifests == 0:
        say("error", f"no manifests (*.json, *.yaml, *.yml) under {args.directory}")
        return 1
    return 1 if found.problems else 0


def _problem_line(cells: Any) -> str:
    """``path: field: message`` (the path with ``#index`` for a job of a list file)."""
    _, _, problem, source = cells
    return plain_problem(source, problem)
