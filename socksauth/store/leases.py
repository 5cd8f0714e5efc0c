"""SqlConnectionLeases: per-user connection limits that hold across nodes sharing a database.

Each node keeps one row per user it has connections for: (node, username, connections,
renewed_at). Taking a connection is one short transaction:

1. on PostgreSQL, lock the user's row (``SELECT ... FOR UPDATE``), so the takers of one user's
   connections on all nodes go one at a time (SQLite's single writer does that by itself);
2. add one to this node's row;
3. add up the rows of every node renewed within ``stale_after_seconds`` (and this node's own);
   over the limit: roll back, the connection is refused.

Releases are not on the client's path: they are queued and written by a background task
within milliseconds, so a freed slot is usable on other nodes almost at once. A running node
renews its rows every ``renew_seconds``; a node that died stops renewing, and its rows stop
counting after ``stale_after_seconds`` (the users it served could otherwise never reconnect).
At start a node deletes the rows it left behind in a previous life, and at stop its rows.

Only users with a limit are tracked: for everyone else, connecting costs no database work.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from datetime import UTC, datetime, timedelta
from types import TracebackType

from sqlalchemy import bindparam, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from socksauth.health import Health, describe, stop_task
from socksauth.logs import get_logger
from socksauth.store.models import ConnectionLeaseRow, UserRow

log = get_logger("store")

RENEW_SECONDS = 10.0
STALE_AFTER_SECONDS = 30.0

_LEASES = ConnectionLeaseRow.metadata.tables[ConnectionLeaseRow.__tablename__]


class _OverLimit(Exception):
    """Rolls back the transaction that took one connection too many."""


class SqlConnectionLeases:
    """This node's share of each limited user's connections, in SQL."""

    def __init__(
        self,
        engine: AsyncEngine,
        node: str,
        renew_seconds: float = RENEW_SECONDS,
        stale_after_seconds: float = STALE_AFTER_SECONDS,
    ) -> None:
        self._engine = engine
        self._node = node
        self._renew_seconds = renew_seconds
        self._stale_after = timedelta(seconds=stale_after_seconds)
        self._released: Counter[str] = Counter()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # A database outage costs two log lines, and retries back off (socksauth/health.py).
        self.health = Health("updating the connection leases", log)

    async def acquire(self, username: str, limit: int) -> bool:
        """Count one more connection of ``username`` on this node if all nodes together have
        fewer than ``limit``; False (nothing counted) when they have that many already.

        Raises:
            sqlalchemy errors: the database is unreachable (the caller decides what then).
        """
        now = datetime.now(UTC)
        try:
            async with self._engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    await conn.execute(
                        select(UserRow.id).where(UserRow.username == username).with_for_update()
                    )
                await self._add(conn, username, now)
                if await self._total(conn, username, now) > limit:
                    raise _OverLimit
        except _OverLimit:
            return False
        return True

    def release(self, username: str) -> None:
        """Count one connection of ``username`` fewer, soon (written in the background)."""
        self._released[username] += 1
        self._wake.set()

    async def _add(self, conn: AsyncConnection, username: str, now: datetime) -> None:
        values = {"node": self._node, "username": username, "connections": 1, "renewed_at": now}
        set_ = {"connections": _LEASES.c.connections + 1, "renewed_at": now}
        if conn.dialect.name == "postgresql":
            pg_insert = postgresql.insert(_LEASES).values(**values)
            await conn.execute(
                pg_insert.on_conflict_do_update(index_elements=["node", "username"], set_=set_)
            )
        else:
            sqlite_insert = sqlite.insert(_LEASES).values(**values)
            await conn.execute(
                sqlite_insert.on_conflict_do_update(index_elements=["node", "username"], set_=set_)
            )

    async def flush(self) -> None:
        """Write the queued releases now."""
        if not self._released:
            return
        batch, self._released = self._released, Counter()
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    update(_LEASES)
                    .where(
                        _LEASES.c.node == self._node,
                        _LEASES.c.username == bindparam("b_username"),
                    )
                    .values(connections=_LEASES.c.connections - bindparam("b_count")),
                    [{"b_username": name, "b_count": count} for name, count in batch.items()],
                )
        except Exception:
            # Keep them for the next round: until then the user has fewer slots, never more.
            self._released.update(batch)
            raise

    async def renew(self) -> None:
        """Mark this node's rows as alive; drop those with no connection left."""
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(ConnectionLeaseRow).where(
                    ConnectionLeaseRow.node == self._node, ConnectionLeaseRow.connections <= 0
                )
            )
            await conn.execute(
                update(ConnectionLeaseRow)
                .where(ConnectionLeaseRow.node == self._node)
                .values(renewed_at=datetime.now(UTC))
            )

    async def clear(self) -> None:
        """Delete every row of this node (at start: left by a previous process; at stop)."""
        async with self._engine.begin() as conn:
            await conn.execute(
                delete(ConnectionLeaseRow).where(ConnectionLeaseRow.node == self._node)
            )

    async def count(self, username: str) -> int:
        """Connections of ``username`` on all live nodes (for tests and the CLI)."""
        async with self._engine.connect() as conn:
            return await self._total(conn, username, datetime.now(UTC))

    async def _total(self, conn: AsyncConnection, username: str, now: datetime) -> int:
        """The connections of ``username`` that count at ``now``: this node's, and those of
        every node that renewed its rows within ``stale_after_seconds``."""
        total = await conn.scalar(
            select(func.coalesce(func.sum(ConnectionLeaseRow.connections), 0)).where(
                ConnectionLeaseRow.username == username,
                or_(
                    ConnectionLeaseRow.node == self._node,
                    ConnectionLeaseRow.renewed_at >= now - self._stale_after,
                ),
            )
        )
        return int(total or 0)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_renewal = loop.time() + self._renew_seconds
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(next_renewal):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.flush()
                if loop.time() >= next_renewal:
                    next_renewal = loop.time() + self._renew_seconds
                    await self.renew()
            except Exception as error:
                await self.health.retry(error)
            else:
                self.health.succeeded()

    async def __aenter__(self) -> SqlConnectionLeases:
        await self.clear()
        self._task = asyncio.create_task(self._run(), name="connection-leases")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await stop_task(self._task)
        try:
            await self.clear()
        except Exception as error:
            # Rows of a stopped node stop counting once stale anyway.
            log.warning("could not delete this node's connection leases: %s", describe(error))
