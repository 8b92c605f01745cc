"""A PostgreSQL cluster of the test's own, to restart and stop without touching the shared one.

The tests that restart or stop PostgreSQL used to do it to the local server every other test
uses, which made the suite impossible to run in parallel (and disturbed anyone else on the
machine). ``private_cluster()`` runs ``initdb`` into a temporary folder and starts a server on a
free loopback port with trust auth; ``restart()`` and ``stopped()`` act on it alone. As root it
runs the server as the ``postgres`` user (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HOST = "127.0.0.1"
_BIN_ROOT = Path("/usr/lib/postgresql")


def _bin_dir() -> Path | None:
    if shutil.which("initdb") and shutil.which("pg_ctl"):
        return Path(str(shutil.which("initdb"))).parent
    versions = sorted(_BIN_ROOT.glob("*/bin/initdb")) if _BIN_ROOT.is_dir() else []
    return versions[-1].parent if versions else None


def _server_user() -> str | None:
    """The user the server runs as: ourselves, or ``postgres`` when we are root."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return None
    return "postgres"


def private_cluster_problem() -> str | None:
    """Why no private cluster can be made here, or None when one can."""
    if _bin_dir() is None:
        return "PostgreSQL's initdb and pg_ctl are not installed"
    if os.geteuid() == 0 and _server_user() is None:
        return "running as root with no postgres user to run a server as"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser"
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Cluster:
    """A running private server: its DSN and the means to restart or stop it."""

    folder: Path
    port: int
    bin_dir: Path
    user: str | None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@{HOST}:{self.port}/postgres"

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin_dir / tool), *args]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def _pg_ctl(self, action: str) -> None:
        options = f"-p {self.port} -k {self.folder} -c listen_addresses={HOST} -c fsync=off"
        self._run(
            "pg_ctl", action, "-D", str(self.folder / "data"), "-m", "fast", "-w",
            "-l", str(self.folder / "server.log"), "-o", options,
        )  # fmt: skip

    def listening(self) -> bool:
        try:
            with socket.create_connection((HOST, self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def start(self) -> None:
        if not self.listening():
            self._pg_ctl("start")
        deadline = time.monotonic() + 30
        while not self.listening():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the private PostgreSQL did not listen on {self.port}")
            time.sleep(0.05)

    def restart(self) -> None:
        """Restart (fast mode: every session ends at once); wait until it listens."""
        try:
            self._pg_ctl("restart")
        finally:
            self.start()

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """Stopped for the block; started again whatever happens."""
        self._pg_ctl("stop")
        try:
            yield
        finally:
            self.start()


@contextlib.contextmanager
def private_cluster() -> Iterator[Cluster]:
    """initdb, start, yield the cluster; stop it and remove its files afterwards."""
    bin_dir = _bin_dir()
    assert bin_dir is not None, private_cluster_problem()
    folder = Path(tempfile.mkdtemp(prefix="batchsub-pg-"))
    user = _server_user()
    if user is not None:
        shutil.chown(folder, user)
    cluster = Cluster(folder, _free_port(), bin_dir, user)
    try:
        cluster._run(
            "initdb", "-D", str(folder / "data"), "-U", "postgres", "--auth=trust",
            "--no-sync", "-E", "UTF8",
        )  # fmt: skip
        cluster.start()
        yield cluster
    finally:
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            cluster._pg_ctl("stop")
        shutil.rmtree(folder, ignore_errors=True)
