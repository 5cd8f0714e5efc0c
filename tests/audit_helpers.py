"""Audit test pieces: entries to write, and a database outage that tests can switch on and off.

The outage is real: SQLite gets an exclusive lock held by another connection; PostgreSQL
refuses new connections to the test database (ALLOW_CONNECTIONS false) and its sessions are
terminated. The machine's PostgreSQL server itself keeps running.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from socksauth.audit import new_entry_id
from socksauth.store.database import create_engine
from socksauth.store.interfaces import AuditEntry

T0 = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def opened(
    username: str | None = "alice",
    started_at: datetime = T0,
    node: str = "node-a",
    **values: Any,
) -> AuditEntry:
    """An open CONNECT entry (no end, no outcome)."""
    fields: dict[str, Any] = {
        "id": new_entry_id(),
        "node": node,
        "client_host": "127.0.0.1",
        "client_port": 40000,
        "started_at": started_at,
        "username": username,
        "command": "connect",
        "target_host": "example.com",
        "target_port": 443,
        "dialed": "93.184.215.14:443",
        "reply": 0,
    }
    fields.update(values)
    return AuditEntry(**fields)


def finished(
    entry: AuditEntry,
    seconds: float = 2.0,
    outcome: str = "closed",
    bytes_from_client: int = 100,
    bytes_to_client: int = 1000,
) -> AuditEntry:
    """``entry`` completed ``seconds`` after it started."""
    values = {name: getattr(entry, name) for name in entry.__dataclass_fields__}
    values.update(
        ended_at=entry.started_at + timedelta(seconds=seconds),
        duration_seconds=seconds,
        outcome=outcome,
        bytes_from_client=bytes_from_client,
        bytes_to_client=bytes_to_client,
    )
    return AuditEntry(**values)


def failed_login(username: str, started_at: datetime = T0, **values: Any) -> AuditEntry:
    fields: dict[str, Any] = {
        "id": new_entry_id(),
        "node": "node-a",
        "client_host": "127.0.0.1",
        "client_port": 40001,
        "started_at": started_at,
        "username": username,
        "outcome": "auth_failed",
        "ended_at": started_at,
        "duration_seconds": 0.01,
    }
    fields.update(values)
    return AuditEntry(**fields)


def quick_failing_engine(database_url: str) -> AsyncEngine:
    """Our engine, but a locked SQLite database fails after 0.2 s instead of 5 s."""
    engine = create_engine(database_url)
    if engine.dialect.name == "sqlite":

        def short_busy_timeout(dbapi_connection: Any, record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA busy_timeout=200")
            cursor.close()

        event.listen(engine.sync_engine, "connect", short_busy_timeout)
    return engine


class Outage:
    """Makes the database behind ``database_url`` unusable for writers, then usable again."""

    def __init__(self, database_url: str) -> None:
        self._url = make_url(database_url)
        self._lock: sqlite3.Connection | None = None
        self.active = False

    async def start(self) -> None:
        if self._url.get_backend_name() == "sqlite":
            lock = sqlite3.connect(self._url.database or "", isolation_level=None, timeout=5)
            lock.execute("BEGIN EXCLUSIVE")
            self._lock = lock
        else:
            await self._admin(
                f'ALTER DATABASE "{self._url.database}" ALLOW_CONNECTIONS false',
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{self._url.database}' AND pid <> pg_backend_pid()",
            )
        self.active = True

    async def end(self) -> None:
        if self._lock is not None:
            self._lock.execute("ROLLBACK")
            self._lock.close()
            self._lock = None
        elif self.active:
            await self._admin(f'ALTER DATABASE "{self._url.database}" ALLOW_CONNECTIONS true')
        self.active = False

    async def _admin(self, *statements: str) -> None:
        admin = create_async_engine(
            self._url.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool
        )
        try:
            async with admin.connect() as conn:
                for statement in statements:
                    await conn.execute(text(statement))
        finally:
            await admin.dispose()


@contextlib.asynccontextmanager
async def outage(database_url: str) -> AsyncIterator[Outage]:
    """The database is down inside the block (and back after it, whatever happens)."""
    down = Outage(database_url)
    await down.start()
    try:
        yield down
    finally:
        await down.end()


async def dump_database(engine: AsyncEngine) -> str:
    """Every value of every table as text, to search for things that must not be there."""
    async with engine.connect() as conn:
        tables = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
        chunks = []
        for table in tables:
            rows = (await conn.execute(text(f'SELECT * FROM "{table}"'))).all()
            chunks.extend(repr(tuple(row)) for row in rows)
    return "\n".join(chunks)
