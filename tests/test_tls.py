"""TLS: an endpoint with a private CA fails in one line naming --ca-file, and works with it."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web

from batchsub.simulator import SimulatorConfig, create_app
from tests.process_support import clean_env
from tests.support import PROJECT, TOKEN, write_manifests

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself: a private CA as far as clients know."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@asynccontextmanager
async def https_simulator(cert: Path, key: Path) -> AsyncIterator[str]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    config = SimulatorConfig(project_id=PROJECT, tokens=frozenset({TOKEN}))
    runner = web.AppRunner(create_app(config))
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context).start()
        yield f"https://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def run_cli(*args: str) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "batchsub", *args,
        env={**clean_env(), "BATCHSUB_AUTH_TOKEN": TOKEN},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_private_ca_needs_ca_file(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    folder = tmp_path / "m"
    write_manifests(folder, 2)
    async with https_simulator(cert, key) as url:
        base = ["run", str(folder), "--endpoint", url, "--project-id", PROJECT]
        code, err = await run_cli(*base, "--ledger", str(tmp_path / "a.db"))
        assert code == 2
        errors = [line for line in err.splitlines() if line.startswith("batchsub: error:")]
        assert len(errors) == 1 and "TLS failure" in errors[0] and "--ca-file" in errors[0]

        code, err = await run_cli(*base, "--ledger", str(tmp_path / "b.db"), "--ca-file", str(cert))
        assert code == 0, err
