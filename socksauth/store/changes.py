"""SqlChangeFeed: when did an account or a rule last change, and news of it from PostgreSQL.

Triggers (migration 0004) bump ``store_revision`` in the transaction of every change, whoever
makes it. Reading the counter is one tiny query, cheap enough to poll every second; on
PostgreSQL the triggers also NOTIFY ``socksauth_changes``, so a node that LISTENs hears of a
change made on another node within milliseconds, and polls only in case the notification
connection was lost.

On SQLite there is no one to notify, but every committed change writes the database file or
its write-ahead log: ``maybe_changed()`` compares the two files' stat() (a few microseconds,
no query) so a login can ask, before it trusts a cached account, whether it must read the
counter first. That makes `user disable` hold from the very next login.
"""

from __future__ import annotations

import contextlib
import os
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
        self._notified = False  # a notification came that no revision() read has seen
        self._files: tuple[str, ...] = ()
        self._signature: tuple[tuple[int, int, int], ...] | None = None
        url = engine.url
        if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
            path = os.path.abspath(str(url.database))
            self._files = (path, path + "-wal")

    @property
    def can_listen(self) -> bool:
        return self._engine.dialect.name == "postgresql"

    def maybe_changed(self) -> bool:
        """Whether something may have been committed since the last call, as far as this
        can be told without a query: on SQLite, the database file or its write-ahead log
        changed (size, modification time or inode); on PostgreSQL never (changes are
        pushed, see listen()). A False is cheap to trust; a True asks for revision()."""
        if self.can_listen:
            # Pushed: a notification that arrived and was not yet acted on is a change.
            notified, self._notified = self._notified, False
            return notified
        if not self._files:
            return True  # SQLite in memory: cannot tell
        signature = tuple(_stat(path) for path in self._files)
        if signature == self._signature:
            return False
        self._signature = signature
        return True

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
            await driver.add_listener(CHANNEL, self._notify)
            # A lost connection may have swallowed a notification: report it as a possible
            # change, so the caller re-reads the counter and listens anew at once.
            driver.add_termination_listener(self._terminated)
        except BaseException:
            await conn.close()
            raise
        self._listening, self._driver_connection = conn, driver
        log.debug("listening for changes on %s", CHANNEL)
        return True

    def _notify(self, connection: object, pid: int, channel: str, payload: str) -> None:
        self._notified = True
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
                await driver.remove_listener(CHANNEL, self._notify)
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()


def _stat(path: str) -> tuple[int, int, int]:
    try:
        status = os.stat(path)
    except OSError:
        return (0, 0, 0)
    return (status.st_ino, status.st_size, status.st_mtime_ns)
