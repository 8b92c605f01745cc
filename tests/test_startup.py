"""Start-up cost: a plain ``run`` imports none of the heavy modules it does not use.

Each is checked by name in a fresh interpreter, never by timing: rich (progress bar, tables),
prometheus_client (``--metrics-port``), aio_pika (queues), asyncpg (PostgreSQL ledger),
watchfiles (drop folder), yaml (YAML manifests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, write_manifests

LAZY = ("rich", "prometheus_client", "aio_pika", "asyncpg", "watchfiles", "yaml")

_REPORT_LOADED = (
    "import json, sys\n"
    "{body}\n"
    f"print(json.dumps(sorted(m for m in {LAZY!r} if m in sys.modules)), file=sys.stderr)\n"
)


def loaded_after(body: str, cwd: Path) -> tuple[list[str], subprocess.CompletedProcess[str]]:
    """The LAZY modules loaded after running ``body`` in a fresh interpreter (stdout a pipe)."""
    result = subprocess.run(
        [sys.executable, "-c", _REPORT_LOADED.format(body=body)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    loaded: list[str] = json.loads(result.stderr.strip().splitlines()[-1])
    return loaded, result


def test_importing_the_run_path_loads_no_heavy_module(tmp_path: Path) -> None:
    loaded, _ = loaded_after("import batchsub.cli, batchsub.runner", tmp_path)
    assert loaded == []


@pytest.mark.slow
def test_a_run_to_a_pipe_loads_no_heavy_module(tmp_path: Path) -> None:
    write_manifests(tmp_path / "m", 2)
    body = (
        "from batchsub.cli import main\n"
        f"code = main(['run', {str(tmp_path / 'm')!r}, '--simulator', '--log-level', 'error'])\n"
        "assert code == 0, code"
    )
    loaded, result = loaded_after(body, tmp_path)
    assert loaded == []
    assert "created\t2\n" in result.stdout and "total\t2\n" in result.stdout  # plain, piped
