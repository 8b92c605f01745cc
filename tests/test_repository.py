"""The repository itself: what a merge can leave behind and no other test would notice."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

_MARKERS = ("<<<<<<< ", ">>>>>>> ")


def _tracked_text_files() -> list[str]:
    try:
        done = subprocess.run(
            ["git", "-C", str(REPO), "ls-files"], check=True, capture_output=True, text=True
        )
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    suffixes = (".py", ".md", ".toml", ".yaml", ".yml", ".json", ".txt", ".cfg", ".sh")
    return [name for name in done.stdout.splitlines() if name.endswith(suffixes)]


def test_no_file_holds_a_merge_conflict_marker() -> None:
    found = []
    for name in _tracked_text_files():
        path = REPO / name
        if not path.is_file():
            continue
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if line.startswith(_MARKERS) or line == "=======":
                found.append(f"{name}:{number}: {line[:40]}")
    assert found == []
