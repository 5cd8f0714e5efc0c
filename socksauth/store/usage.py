"""SqlTrafficUsage: bytes relayed per user, per node and hour, summed over nodes for quotas.

Every node adds its counts of the last flush interval to its own row of the current hour
(one upsert per user, all in one transaction), so nodes never contend for a row; a quota's
usage is the sum over all nodes of the hours in its period, read in one query.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.store.models import TrafficUsageRow
from socksauth.store.times import to_utc

_USAGE = TrafficUsageRow.metadata.tables[TrafficUsageRow.__tablename__]
# Users per totals query: keeps the statement's parameters far below every driver's limit.
_CHUNK = 400


class SqlTrafficUsage:
    """The traffic_usage table behind the TrafficUsage Protocol."""

    __slots__ = ("_engine",)

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add(self, node: str, bucket_start: datetime, usage: Mapping[str, int]) -> None:
        """Add ``usage`` (bytes by username) to ``node``'s counts for the hour at
        ``bucket_start``, in one transaction."""
        rows = [
            {"username": name, "node": node, "bucket_start": to_utc(bucket_start), "bytes": n}
            for name, n in usage.items()
            if n > 0
        ]
        if not rows:
            return
        keys = ["username", "bucket_start", "node"]
        async with self._engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                pg = postgresql.insert(_USAGE)
                await conn.execute(
                    pg.on_conflict_do_update(
                        index_elements=keys, set_={"bytes": _USAGE.c.bytes + pg.excluded.bytes}
                    ),
                    rows,
                )
            else:
                lite = sqlite.insert(_USAGE)
                await conn.execute(
                    lite.on_conflict_do_update(
                        index_elements=keys, set_={"bytes": _USAGE.c.bytes + lite.excluded.bytes}
                    ),
                    rows,
                )

    async def totals(self, since: Mapping[str, datetime]) -> Mapping[str, int]:
        """For each username, the bytes of every node in the hours from ``since[username]``
        on (users without any: absent)."""
        found: dict[str, int] = {}
        items = list(since.items())
        async with self._engine.connect() as conn:
            for first in range(0, len(items), _CHUNK):
                chunk = items[first : first + _CHUNK]
                result = await conn.execute(
                    select(TrafficUsageRow.username, func.sum(TrafficUsageRow.bytes))
                    .where(
                        or_(
                            *(
                                and_(
                                    TrafficUsageRow.username == name,
                                    TrafficUsageRow.bucket_start >= to_utc(start),
                                )
                                for name, start in chunk
                            )
                        )
                    )
                    .group_by(TrafficUsageRow.username)
                )
                found.update({name: int(total or 0) for name, total in result})
        return found

    async def prune(self, before: datetime) -> int:
        """Delete the hours before ``before``; how many rows."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                delete(TrafficUsageRow).where(TrafficUsageRow.bucket_start < to_utc(before))
            )
        return int(result.rowcount or 0)
