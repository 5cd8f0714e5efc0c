"""SqlSessionStore: live sessions and nodes across the cluster, kicks, and per-user traffic.

A session is an open audit row (a tunnel, association or binding) on a live node: one whose
heartbeat (store/nodes.py) is recent. Its byte counts and rates are the interim ones its node
writes every few seconds. A kick marks rows (``kill_requested_at``, ``killed_by``) and bumps
the change counter in the same transaction, so every node hears of it as of any change
(NOTIFY on PostgreSQL, the counter's poll otherwise) and ends the rows it holds.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections import defaultdict
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

from sqlalchemy import Table, case, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from socksauth.config import in_networks
from socksauth.connection_record import Outcome
from socksauth.errors import UserError
from socksauth.store.audit import _entry
from socksauth.store.changes import CHANNEL
from socksauth.store.database import database_errors
from socksauth.store.interfaces import (
    AuditEntry,
    NodeRecord,
    SessionQuery,
    UserActivity,
)
from socksauth.store.models import AuditRow, NodeRow, StoreRevisionRow
from socksauth.store.nodes import STALE_AFTER_SECONDS
from socksauth.store.times import from_db, to_utc

_AUDIT: Table = AuditRow.__table__  # type: ignore[assignment]
# The dashboard's chart reads at most this many rows, the connections that moved most: the
# page is served by a proxy process, whose loop must not spend long on it.
TRAFFIC_ROW_LIMIT = 20_000


class SqlSessionStore:
    """SessionReader and KillRequests in SQL."""

    __slots__ = ("_engine", "_stale_after")

    def __init__(self, engine: AsyncEngine, stale_after_seconds: float = STALE_AFTER_SECONDS):
        self._engine = engine
        self._stale_after = timedelta(seconds=stale_after_seconds)

    def _live(self, now: datetime) -> list[ColumnElement[bool]]:
        """Open rows with a command, on a node that beat recently."""
        alive = (
            select(NodeRow.name)
            .where(NodeRow.heartbeat_at >= now - self._stale_after)
            .scalar_subquery()
        )
        return [
            AuditRow.ended_at.is_(None),
            AuditRow.command.is_not(None),
            AuditRow.node.in_(alive),
        ]

    async def live_sessions(self, query: SessionQuery) -> Sequence[AuditEntry]:
        """Open connections on live nodes (matching ``query``), oldest first."""
        conditions = self._live(datetime.now(UTC))
        if query.username is not None:
            conditions.append(AuditRow.username == query.username)
        if query.node is not None:
            conditions.append(AuditRow.node == query.node)
        statement = (
            select(_AUDIT)
            .where(*conditions)
            .order_by(AuditRow.started_at, AuditRow.id)
            .limit(query.limit)
        )
        with database_errors():
            async with self._engine.connect() as conn:
                rows = (await conn.execute(statement)).all()
        return [_entry(row) for row in rows]

    async def nodes(self) -> Sequence[NodeRecord]:
        """Every node that has a row, by name; ``alive`` when it beat recently."""
        now = datetime.now(UTC)
        with database_errors():
            async with self._engine.connect() as conn:
                rows = (await conn.execute(select(NodeRow).order_by(NodeRow.name))).all()
        records = []
        for row in rows:
            heartbeat = from_db(row.heartbeat_at)
            records.append(
                NodeRecord(
                    name=row.name,
                    started_at=from_db(row.started_at),
                    heartbeat_at=heartbeat,
                    connections=row.connections,
                    version=row.version,
                    alive=heartbeat >= now - self._stale_after,
                )
            )
        return records

    async def user_activity(self, since: datetime) -> Sequence[UserActivity]:
        """Per user: live connections and their summed rates; bytes of the connections that
        started since ``since`` (open ones with their interim counts) and failed logins."""
        now = datetime.now(UTC)
        live = (
            select(
                AuditRow.username,
                func.count().label("open"),
                func.coalesce(func.sum(AuditRow.rate_from_client), 0.0).label("up"),
                func.coalesce(func.sum(AuditRow.rate_to_client), 0.0).label("down"),
            )
            .where(*self._live(now), AuditRow.username.is_not(None))
            .group_by(AuditRow.username)
        )
        totals = (
            select(
                AuditRow.username,
                func.coalesce(func.sum(AuditRow.bytes_from_client), 0).label("from_client"),
                func.coalesce(func.sum(AuditRow.bytes_to_client), 0).label("to_client"),
                func.sum(case((AuditRow.outcome == Outcome.AUTH_FAILED.value, 1), else_=0)).label(
                    "failed"
                ),
            )
            .where(AuditRow.started_at >= to_utc(since), AuditRow.username.is_not(None))
            .group_by(AuditRow.username)
        )
        with database_errors():
            async with self._engine.connect() as conn:
                live_rows = (await conn.execute(live)).all()
                total_rows = (await conn.execute(totals)).all()
        names = {row.username for row in live_rows} | {row.username for row in total_rows}
        now_by_user = {row.username: row for row in live_rows}
        today_by_user = {row.username: row for row in total_rows}
        activity = []
        for name in sorted(names):
            current, today = now_by_user.get(name), today_by_user.get(name)
            activity.append(
                UserActivity(
                    username=name,
                    open_connections=0 if current is None else int(current.open),
                    rate_from_client=0.0 if current is None else float(current.up),
                    rate_to_client=0.0 if current is None else float(current.down),
                    bytes_from_client=0 if today is None else int(today.from_client),
                    bytes_to_client=0 if today is None else int(today.to_client),
                    failed_logins=0 if today is None else int(today.failed),
                )
            )
        return activity

    async def request_kill(
        self,
        *,
        by: str,
        ids: Collection[UUID] = (),
        username: str | None = None,
        client_networks: Collection[str] = (),
    ) -> Sequence[AuditEntry]:
        """Mark these live connections to be ended, and tell every node; the ones marked.

        Raises:
            UserError: a client network is not a CIDR, or neither ids nor a user is given.
        """
        if not ids and username is None:
            raise UserError("name session ids, or a user")
        try:
            networks = [ipaddress.ip_network(n, strict=False) for n in client_networks]
        except ValueError as error:
            raise UserError(f"--client: {error}") from None
        now = datetime.now(UTC)
        conditions = self._live(now)
        if ids:
            conditions.append(AuditRow.id.in_(list(ids)))
        if username is not None:
            conditions.append(AuditRow.username == username)
        with database_errors():
            async with self._engine.begin() as conn:
                rows = (await conn.execute(select(_AUDIT).where(*conditions))).all()
                chosen = [
                    _entry(row)
                    for row in rows
                    if not networks or in_networks(row.client_host, networks)
                ]
                if chosen:
                    await conn.execute(
                        update(AuditRow)
                        .where(AuditRow.id.in_([entry.id for entry in chosen]))
                        .values(kill_requested_at=now, killed_by=by[:255])
                    )
                    await _announce(conn)
        return chosen

    async def find_open(self, ids: Collection[UUID]) -> Sequence[AuditEntry]:
        """Which of ``ids`` are still open rows (on any node)."""
        if not ids:
            return []
        with database_errors():
            async with self._engine.connect() as conn:
                rows = (
                    await conn.execute(
                        select(_AUDIT).where(
                            AuditRow.id.in_(list(ids)), AuditRow.ended_at.is_(None)
                        )
                    )
                ).all()
        return [_entry(row) for row in rows]

    async def kill_requests(self, node: str) -> Mapping[UUID, str]:
        """Open rows of ``node`` with a kick asked for: id → who asked."""
        statement = select(AuditRow.id, AuditRow.killed_by).where(
            AuditRow.node == node,
            AuditRow.ended_at.is_(None),
            AuditRow.kill_requested_at.is_not(None),
        )
        with database_errors():
            async with self._engine.connect() as conn:
                rows = (await conn.execute(statement)).all()
        return {row.id: row.killed_by or "" for row in rows}

    async def traffic(
        self, since: datetime, until: datetime, bucket_seconds: int
    ) -> Mapping[str, Sequence[tuple[int, int]]]:
        """Per user, bytes (from client, to client) per bucket of [since, until): each
        connection's bytes spread evenly from its start to its end (open ones: to their
        last interim count), the best the audit knows without a row per interval."""
        since, until = to_utc(since), to_utc(until)
        end = func.coalesce(AuditRow.ended_at, AuditRow.updated_at, AuditRow.started_at)
        statement = (
            select(
                AuditRow.username,
                AuditRow.started_at,
                end.label("end"),
                AuditRow.bytes_from_client,
                AuditRow.bytes_to_client,
            )
            .where(
                AuditRow.username.is_not(None),
                AuditRow.command.is_not(None),
                AuditRow.started_at < until,
                end >= since,
            )
            .order_by((AuditRow.bytes_from_client + AuditRow.bytes_to_client).desc())
            .limit(TRAFFIC_ROW_LIMIT)
        )
        with database_errors():
            async with self._engine.connect() as conn:
                rows = (await conn.execute(statement)).all()
        buckets = max(1, int((until - since).total_seconds()) // bucket_seconds)
        # Off the loop: thousands of rows times up to 60 buckets.
        return await asyncio.to_thread(_series, rows, since, buckets, bucket_seconds)


def _series(
    rows: Sequence[Any], since: datetime, buckets: int, bucket_seconds: int
) -> dict[str, list[tuple[int, int]]]:
    series: dict[str, list[list[float]]] = defaultdict(lambda: [[0.0, 0.0] for _ in range(buckets)])
    for row in rows:
        _spread(series[row.username], row, since, bucket_seconds)
    return {
        name: [(round(up), round(down)) for up, down in values]
        for name, values in sorted(series.items())
    }


def _spread(values: list[list[float]], row: Any, since: datetime, bucket_seconds: int) -> None:
    start = (from_db(row.started_at) - since).total_seconds()
    stop = max(start, (from_db(row.end) - since).total_seconds())
    span = stop - start
    if span <= 0:
        index = int(start // bucket_seconds)
        if 0 <= index < len(values):
            values[index][0] += row.bytes_from_client
            values[index][1] += row.bytes_to_client
        return
    first = max(0, int(start // bucket_seconds))
    last = min(len(values) - 1, int(stop // bucket_seconds))
    for index in range(first, last + 1):
        low, high = index * bucket_seconds, (index + 1) * bucket_seconds
        share = (min(high, stop) - max(low, start)) / span
        if share > 0:
            values[index][0] += row.bytes_from_client * share
            values[index][1] += row.bytes_to_client * share


async def _announce(conn: AsyncConnection) -> None:
    """Bump the change counter (and on PostgreSQL notify) in ``conn``'s transaction: what the
    triggers do for accounts and rules, so nodes learn of a kick the same way."""
    await conn.execute(
        update(StoreRevisionRow)
        .where(StoreRevisionRow.id == 1)
        .values(revision=StoreRevisionRow.revision + 1)
    )
    if conn.dialect.name == "postgresql":
        await conn.execute(text("SELECT pg_notify(:channel, 'kill')"), {"channel": CHANNEL})
