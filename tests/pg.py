"""A fresh PostgreSQL database per test, on the local server (127.0.0.1:5432, trust auth).

``fresh_database()`` creates a database with a random name through an admin connection and
yields its DSN; it is dropped afterwards, even if connections to it are still open.
"""

from __future__ import annotations

import secrets
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

HOST, PORT = "127.0.0.1", 5432
ADMIN_DSN = f"postgresql://postgres@{HOST}:{PORT}/postgres"


def postgres_listening() -> bool:
    """True if something accepts TCP connections on the PostgreSQL port."""
    try:
        with socket.create_connection((HOST, PORT), timeout=1.0):
            return True
    except OSError:
        return False


@asynccontextmanager
async def fresh_database(prefix: str = "batchsub_test") -> AsyncIterator[str]:
    """Create an empty database with a random name, yield its DSN, drop it afterwards."""
    name = f"{prefix}_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        # template0: template1 may be in use by another test run, which CREATE refuses.
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE template0')
    finally:
        await admin.close()
    try:
        yield f"postgresql://postgres@{HOST}:{PORT}/{name}"
    finally:
        admin = await asyncpg.connect(ADMIN_DSN)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
