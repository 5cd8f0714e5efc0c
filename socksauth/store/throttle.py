"""SqlThrottleStore: the login throttle's pairs, events and key in SQL, for every node.

A process writes its failures in batches (auth/throttle_sharing.py): one transaction per
batch, one atomic upsert per pair that *adds* the failures counted since the last batch to
the stored count (``failures = failures + excluded.failures``), so two nodes counting the
same pair at once never lose a failure and no one reads before writing. Lockouts and
clears are also logged as rows of ``login_throttle_events``, whose trigger bumps the store
revision (and NOTIFYs on PostgreSQL): every node hears of them as of an account change.
"""

from __future__ import annotations

import ipaddress
import secrets
import time
from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import (
    ColumnElement,
    and_,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from socksauth.config import key_in_network
from socksauth.store.interfaces import ThrottleEvent, ThrottlePair, ThrottleUpdate
from socksauth.store.models import LoginThrottleEventRow, LoginThrottleKeyRow, LoginThrottleRow

_PAIRS = LoginThrottleRow.metadata.tables[LoginThrottleRow.__tablename__]
_EVENTS = LoginThrottleEventRow.metadata.tables[LoginThrottleEventRow.__tablename__]
_KEY = LoginThrottleKeyRow.metadata.tables[LoginThrottleKeyRow.__tablename__]

DAY_SECONDS = 86_400.0
EVENT_RETENTION_SECONDS = 3600.0


def _greatest(a: Any, b: Any) -> ColumnElement[Any]:
    return case((a > b, a), else_=b)


def _encode_recent(recent: Sequence[bytes]) -> str:
    return ",".join(digest.hex() for digest in recent)


def _decode_recent(text: str) -> tuple[bytes, ...]:
    return tuple(bytes.fromhex(part) for part in text.split(",") if part)


def _pair(row: Any) -> ThrottlePair:
    return ThrottlePair(
        username=row.username,
        address=row.address,
        failures=row.failures,
        last_failure_at=row.last_failure_at,
        locked_until=row.locked_until,
        lockouts=row.lockouts,
        day_failures=row.day_failures,
        day_started_at=row.day_started_at,
        recent=_decode_recent(row.recent),
        familiar_at=row.familiar_at,
    )



async def clear_pairs(
    conn: AsyncConnection, username: str | None, network: str | None, now: float
) -> int:
    """In ``conn``'s transaction: forget the failures and lockouts of ``username`` and/or of
    addresses in ``network`` (None: any), keeping each pair's familiar standing, and log a
    "clear" event that every node applies; how many pairs had failures or a lockout."""
    c = _PAIRS.c
    statement = select(c.username, c.address).where(or_(c.failures > 0, c.locked_until > now))
    if username is not None:
        statement = statement.where(c.username == username)
    keys = [(row.username, row.address) for row in await conn.execute(statement)]
    if network is not None:
        parsed = ipaddress.ip_network(network, strict=False)
        keys = [key for key in keys if key_in_network(key[1], parsed)]
    for start in range(0, len(keys), 500):
        chunk = keys[start : start + 500]
        await conn.execute(
            update(_PAIRS)
            .where(tuple_(c.username, c.address).in_(chunk))
            .values(
                failures=0,
                last_failure_at=0.0,
                locked_until=0.0,
                lockouts=0,
                day_failures=0,
                recent="",
            )
        )
        await conn.execute(
            delete(_PAIRS).where(tuple_(c.username, c.address).in_(chunk), c.familiar_at <= 0)
        )
    await conn.execute(
        insert(_EVENTS).values(kind="clear", username=username, network=network, created_at=now)
    )
    return len(keys)


async def _delete_pairs(conn: AsyncConnection, keys: Sequence[tuple[str, str]]) -> None:
    # In chunks: a statement has a bounded number of parameters (SQLite: 32,766).
    for start in range(0, len(keys), 500):
        chunk = list(keys[start : start + 500])
        await conn.execute(
            delete(_PAIRS).where(tuple_(_PAIRS.c.username, _PAIRS.c.address).in_(chunk))
        )


class SqlThrottleStore:
    """The ThrottleStore on SQLite or PostgreSQL."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def secret(self) -> bytes:
        async with self._engine.begin() as conn:
            stored = await conn.scalar(select(_KEY.c.secret).where(_KEY.c.id == 1))
            if stored is None:
                values = {"id": 1, "secret": secrets.token_hex(32)}
                if self._engine.dialect.name == "postgresql":
                    await conn.execute(
                        postgresql.insert(_KEY).values(**values).on_conflict_do_nothing()
                    )
                else:
                    await conn.execute(
                        sqlite.insert(_KEY).values(**values).on_conflict_do_nothing()
                    )
                stored = await conn.scalar(select(_KEY.c.secret).where(_KEY.c.id == 1))
        return bytes.fromhex(str(stored))

    async def record(
        self, updates: Sequence[ThrottleUpdate], now: float, window_seconds: float
    ) -> Sequence[ThrottlePair]:
        stored = []
        async with self._engine.begin() as conn:
            for update in updates:
                stored.append(await self._upsert(conn, update, now, window_seconds))
                if update.locked:
                    await conn.execute(
                        insert(_EVENTS).values(
                            kind="lock",
                            username=update.pair.username,
                            network=update.pair.address,
                            created_at=now,
                        )
                    )
        return stored

    async def _upsert(
        self, conn: AsyncConnection, update: ThrottleUpdate, now: float, window_seconds: float
    ) -> ThrottlePair:
        pair = update.pair
        values = {
            "username": pair.username,
            "address": pair.address,
            "failures": pair.failures,
            "last_failure_at": pair.last_failure_at,
            "locked_until": pair.locked_until,
            "lockouts": pair.lockouts,
            "day_failures": pair.day_failures,
            "day_started_at": pair.day_started_at,
            "recent": _encode_recent(pair.recent),
            "familiar_at": max(pair.familiar_at, 0.0),
        }
        dialect = postgresql if self._engine.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(_PAIRS).values(**values)
        new = statement.excluded
        c = _PAIRS.c
        # A pair quiet for the window (and not locked) starts afresh, as in memory.
        stale = and_(
            _greatest(c.last_failure_at, c.locked_until) < now - window_seconds,
            c.locked_until < now,
        )
        new_day = new.day_started_at >= c.day_started_at + DAY_SECONDS
        set_ = {
            "failures": case((stale, new.failures), else_=c.failures + new.failures),
            "last_failure_at": _greatest(c.last_failure_at, new.last_failure_at),
            "locked_until": _greatest(c.locked_until, new.locked_until),
            "lockouts": _greatest(c.lockouts, new.lockouts),
            "day_failures": case(
                (new_day, new.day_failures), else_=c.day_failures + new.day_failures
            ),
            "day_started_at": case((new_day, new.day_started_at), else_=c.day_started_at),
            "recent": new.recent,
            "familiar_at": _greatest(c.familiar_at, new.familiar_at),
        }
        if update.succeeded:
            # The right password: the pair starts afresh (its lockout level too).
            set_ = {
                "failures": 0,
                "last_failure_at": 0.0,
                "locked_until": 0.0,
                "lockouts": 0,
                "day_failures": 0,
                "recent": "",
                "familiar_at": _greatest(c.familiar_at, new.familiar_at),
            }
        elif pair.familiar_at < 0:
            set_["familiar_at"] = 0.0  # lost its familiar standing
        upsert = statement.on_conflict_do_update(
            index_elements=["username", "address"], set_=set_
        ).returning(*_PAIRS.c)
        row = (await conn.execute(upsert)).one()
        return _pair(row)

    async def pairs(self, keys: Collection[tuple[str, str]]) -> Sequence[ThrottlePair]:
        if not keys:
            return []
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(_PAIRS).where(tuple_(_PAIRS.c.username, _PAIRS.c.address).in_(list(keys)))
            )
            return [_pair(row) for row in rows]

    async def active(self, now: float, window_seconds: float) -> Sequence[ThrottlePair]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(_PAIRS)
                .where(
                    or_(
                        _PAIRS.c.locked_until > now,
                        _PAIRS.c.last_failure_at > now - window_seconds,
                    )
                )
                .order_by(_PAIRS.c.username, _PAIRS.c.address)
            )
            return [_pair(row) for row in rows]

    async def events_after(self, event_id: int) -> Sequence[ThrottleEvent]:
        async with self._engine.connect() as conn:
            rows = await conn.execute(
                select(_EVENTS).where(_EVENTS.c.id > event_id).order_by(_EVENTS.c.id)
            )
            return [
                ThrottleEvent(id=row.id, kind=row.kind, username=row.username, network=row.network)
                for row in rows
            ]

    async def last_event_id(self) -> int:
        async with self._engine.connect() as conn:
            return int(await conn.scalar(select(func.coalesce(func.max(_EVENTS.c.id), 0))) or 0)

    async def clear(self, username: str | None, network: str | None) -> int:
        async with self._engine.begin() as conn:
            return await clear_pairs(conn, username, network, time.time())

    async def purge(
        self, now: float, window_seconds: float, familiar_seconds: float, max_rows: int
    ) -> int:
        c = _PAIRS.c
        async with self._engine.begin() as conn:
            result = await conn.execute(
                delete(_PAIRS).where(
                    _greatest(c.last_failure_at, c.locked_until) < now - window_seconds,
                    c.locked_until < now,
                    c.familiar_at < now - familiar_seconds,
                )
            )
            purged = result.rowcount or 0
            count = int(await conn.scalar(select(func.count()).select_from(_PAIRS)) or 0)
            if count > max_rows:
                oldest = (
                    select(c.username, c.address)
                    .where(c.locked_until < now)
                    .order_by(c.last_failure_at)
                    .limit(count - max_rows)
                )
                keys = [(row.username, row.address) for row in await conn.execute(oldest)]
                for start in range(0, len(keys), 500):
                    chunk = keys[start : start + 500]
                    await conn.execute(
                        delete(_PAIRS).where(tuple_(c.username, c.address).in_(chunk))
                    )
                purged += len(keys)
            await conn.execute(
                delete(_EVENTS).where(_EVENTS.c.created_at < now - EVENT_RETENTION_SECONDS)
            )
        return purged
