"""Databases for tests (a temporary SQLite file, a fresh PostgreSQL database per test), and,
through ``pytest_plugins``, the loopback targets and running proxies of tests/e2e.py."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from socksauth.store import migrate
from socksauth.store.database import create_engine

# An admin URL (any database the user may CREATE DATABASE from), e.g.
# postgresql+asyncpg://postgres@127.0.0.1:5432/postgres
POSTGRES_URL_VARIABLE = "SOCKSAUTH_TEST_DATABASE_URL"
# CI sets this to 1: no PostgreSQL must then fail the run instead of skipping half of it.
REQUIRE_POSTGRES_VARIABLE = "SOCKSAUTH_REQUIRE_POSTGRES"
LOCAL_POSTGRES_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"

# Registered here, in the root conftest (pytest refuses pytest_plugins in any other), so that
# every test module sees the fixtures of e2e.py without importing them by name.
pytest_plugins = ["e2e"]


def _unavailable(reason: str) -> None:
    if os.environ.get(REQUIRE_POSTGRES_VARIABLE) == "1":
        pytest.fail(f"PostgreSQL is required ({REQUIRE_POSTGRES_VARIABLE}=1): {reason}")
    pytest.skip(f"no PostgreSQL: {reason}")


def _as_asyncpg(url: str) -> URL:
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        raise pytest.UsageError(f"{POSTGRES_URL_VARIABLE} must be a postgresql:// URL")
    return parsed.set(drivername="postgresql+asyncpg")


def _port_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


async def _can_connect(url: URL) -> bool:
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False
    finally:
        await engine.dispose()


def _reachable(url: URL) -> bool:
    # The first PostgreSQL test asks for this fixture from inside its running event loop,
    # where asyncio.run() is not allowed: probe from a thread with a loop of its own.
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, _can_connect(url)).result()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[URL]:
    """An admin URL for PostgreSQL: from the environment, on localhost, or a throwaway cluster."""
    configured = os.environ.get(POSTGRES_URL_VARIABLE)
    if configured:
        url = _as_asyncpg(configured)
        if not _reachable(url):
            _unavailable(f"cannot connect to {url.render_as_string(hide_password=True)}")
        yield url
        return

    local = make_url(LOCAL_POSTGRES_URL)
    if _port_open("127.0.0.1", 5432) and _reachable(local):
        yield local
        return

    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb is None or pg_ctl is None:
        _unavailable(
            f"set {POSTGRES_URL_VARIABLE}, run a server on 127.0.0.1:5432 with trust auth "
            "for user postgres, or put initdb and pg_ctl on PATH"
        )
    if os.geteuid() == 0:
        _unavailable(
            f"initdb refuses to run as root; set {POSTGRES_URL_VARIABLE} or run a server "
            "on 127.0.0.1:5432"
        )
    assert initdb is not None and pg_ctl is not None
    with tempfile.TemporaryDirectory(prefix="socksauth-pg-") as directory:
        data = Path(directory) / "data"
        port = _free_port()
        subprocess.run(
            [initdb, "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [
                pg_ctl, "-D", str(data), "-l", str(Path(directory) / "log"), "-w", "-o",
                f"-p {port} -h 127.0.0.1 -k {directory} -F", "start",
            ],
            check=True,
            capture_output=True,
        )  # fmt: skip
        try:
            yield make_url(f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres")
        finally:
            subprocess.run(
                [pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop"],
                check=False,
                capture_output=True,
            )


@pytest.fixture(
    params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)],
)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A URL of an empty database: a temporary SQLite file, or a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'socksauth.sqlite3'}"
        return
    admin_url: URL = request.getfixturevalue("postgres_admin_url")
    name = f"socksauth_t_{secrets.token_hex(8)}"
    admin = create_async_engine(admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    try:
        async with admin.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield admin_url.set(database=name).render_as_string(hide_password=False)
        finally:
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        await admin.dispose()


@pytest.fixture
async def unmigrated_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on the empty database, schema not created."""
    engine = create_engine(database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
async def engine(unmigrated_engine: AsyncEngine) -> AsyncEngine:
    """An engine on a database migrated to head."""
    await migrate.upgrade(unmigrated_engine)
    return unmigrated_engine
