"""SqlChangeFeed: when did an account or a rule last change, and news of it from PostgreSQL.

Triggers (migration 0004) bump ``store_revision`` in the transaction of every change, whoever
makes it. Reading the counter is one tiny query, cheap enough to poll every second; on
PostgreSQL the triggers also NOTIFY ``socksauth_changes``, so a node that LISTENs hears of a
change made on another node within milliseconds, and polls only in case the notification
connection was lost.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from socksauth.logs import get_logger
from socksauth.store.models import StoreRevisionRow

log = get_logger("store")

CHANNEL = "socksauth_changes"


class SqlChangeFeed:
    """The store's revision counter, and (PostgreSQL) a LISTEN connection that calls back."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self._listening: AsyncConnection | None = None
        self._driver_connection: Any = None
        self._on_change: Callable[[], None] | None = None

    @property
    def can_listen(self) -> bool:
        return self._engine.dialect.name == "postgresql"

    async def revision(self) -> int:
        """The counter now; it only grows."""
        async with self._engine.connect() as conn:
            value = await conn.scalar(select(StoreRevisionRow.revision))
        return int(value or 0)

    async def listen(self, on_change: Callable[[], None]) -> bool:
        """Call ``on_change`` (on the loop) whenever a change is committed, on any node;
        True when listening. A no-op that returns False on SQLite (poll instead). Call again
        after the connection was lost: it reconnects when needed."""
        if not self.can_listen:
            return False
        self._on_change = on_change
        if self._driver_connection is not None and not self._driver_connection.is_closed():
            return True
        await self._close_listening()
        conn = await self._engine.connect()
        try:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            # Straight on asyncpg, outside any SQLAlchemy transaction: LISTEN takes effect at
            # once, and notifications arrive while the connection sits idle.
            await driver.add_listener(CHANNEL, self._notified)
            # A lost connection may have swallowed a notification: report it as a possible
            # change, so the caller re-reads the counter and listens anew at once.
            driver.add_termination_listener(self._terminated)
        except BaseException:
            await conn.close()
            raise
        self._listening, self._driver_connection = conn, driver
        log.debug("listening for changes on %s", CHANNEL)
        return True

    def _notified(self, connection: object, pid: int, channel: str, payload: str) -> None:
        if self._on_change is not None:
            self._on_change()

    def _terminated(self, connection: object) -> None:
        if self._on_change is not None:
            log.warning("the connection listening for changes was lost; listening anew")
            self._on_change()

    async def close(self) -> None:
        await self._close_listening()

    async def _close_listening(self) -> None:
        conn, driver = self._listening, self._driver_connection
        self._listening = self._driver_connection = None
        if driver is not None:
            driver.remove_termination_listener(self._terminated)
        if driver is not None and not driver.is_closed():
            with contextlib.suppress(Exception):
                await driver.remove_listener(CHANNEL, self._notified)
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
