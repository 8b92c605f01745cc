"""The run report checked against the JSON Schema the package ships."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from jsonschema import Draft202012Validator

from batchsub.report import report_schema

SCHEMA = report_schema()
Draft202012Validator.check_schema(SCHEMA)
VALIDATOR = Draft202012Validator(SCHEMA)
_HEAD = 64  # bytes read of each file to tell a report from anything else


def schema_errors(report: Any) -> list[str]:
    """What in ``report`` breaks the schema, one line each (empty when it conforms)."""
    return [
        f"{error.json_path}: {error.message}"
        for error in sorted(VALIDATOR.iter_errors(report), key=lambda e: list(e.path))
    ]


def written_reports(root: Path) -> Iterator[tuple[Path, Any]]:
    """Every regular file under ``root`` that starts as a report does (``{"summary"``), parsed:
    whatever its name, and None for one that is not JSON. Symlinks, FIFOs and devices are not
    opened (a FIFO would block)."""
    for folder, _, _ in os.walk(root):
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        for entry in entries:
            if not entry.is_file(follow_symlinks=False):
                continue
            try:
                with open(entry.path, "rb") as file:
                    if not file.read(_HEAD).lstrip().startswith(b'{"summary"'):
                        continue
                    file.seek(0)
                    data = file.read()
            except OSError:
                continue
            try:
                yield Path(entry.path), orjson.loads(data)
            except orjson.JSONDecodeError:
                yield Path(entry.path), None


def report_problems(root: Path) -> list[str]:
    """Each report under ``root`` that is not JSON or breaks the schema, with why."""
    problems = []
    for path, report in written_reports(root):
        if report is None:
            problems.append(f"{path}: starts as a report but is not JSON")
        elif isinstance(report, dict) and {"summary", "jobs"} <= report.keys():
            problems += [f"{path}: {error}" for error in schema_errors(report)[:10]]
    return problems
