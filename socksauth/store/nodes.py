"""SqlNodeHeartbeat: this node's row in ``nodes``, renewed while it runs.

Every process that serves (a node, or each worker ``NODE/wN``) upserts its row at start and
renews ``heartbeat_at`` every ``HEARTBEAT_SECONDS``; a clean stop deletes it. A node whose
row was not renewed within ``STALE_AFTER_SECONDS`` died (or cannot reach the database): its
open audit rows are not shown as live (store/sessions.py), as the leases of a dead node stop
counting.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth import __version__
from socksauth.health import stop_task
from socksauth.logs import get_logger
from socksauth.store.models import NodeRow

log = get_logger("store")

HEARTBEAT_SECONDS = 5.0
# Three missed heartbeats: a node busy for a moment is not declared dead.
STALE_AFTER_SECONDS = 3 * HEARTBEAT_SECONDS

_NODES = NodeRow.metadata.tables[NodeRow.__tablename__]


class SqlNodeHeartbeat:
    """An async context manager: this node's row exists and is renewed while inside."""

    def __init__(
        self,
        engine: AsyncEngine,
        node: str,
        connections: Callable[[], int] = lambda: 0,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
    ) -> None:
        """``connections``: how many clients this node has now (written with each beat)."""
        self._engine = engine
        self._node = node
        self._connections = connections
        self._interval = heartbeat_seconds
        self._started_at = datetime.now(UTC)
        self._task: asyncio.Task[None] | None = None

    async def beat(self) -> None:
        """Write this node's row now."""
        now = datetime.now(UTC)
        values = {
            "name": self._node,
            "started_at": self._started_at,
            "heartbeat_at": now,
            "connections": self._connections(),
            "version": __version__[:32],
        }
        update = {"heartbeat_at": now, "connections": values["connections"]}
        update |= {"started_at": self._started_at, "version": values["version"]}
        async with self._engine.begin() as conn:
            insert = (
                postgresql.insert(_NODES)
                if conn.dialect.name == "postgresql"
                else sqlite.insert(_NODES)
            )
            await conn.execute(
                insert.values(**values).on_conflict_do_update(index_elements=["name"], set_=update)
            )

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.beat()
            except Exception as error:
                # The next beat tries again; meanwhile this node may be shown as not live.
                log.warning("could not renew this node's heartbeat: %s", error)

    async def __aenter__(self) -> SqlNodeHeartbeat:
        await self.beat()
        self._task = asyncio.create_task(self._run(), name="node-heartbeat")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await stop_task(self._task)
        try:
            async with self._engine.begin() as conn:
                await conn.execute(delete(NodeRow).where(NodeRow.name == self._node))
        except Exception as error:
            # A row left behind goes stale by itself.
            log.warning("could not delete this node's heartbeat row: %s", error)
