"""SqlThrottleStore on SQLite and PostgreSQL: atomic additive upserts, clears by user and
network, purge and row cap, one key for every node."""

from __future__ import annotations

import asyncio
import time

from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.store.changes import SqlChangeFeed
from socksauth.store.interfaces import ThrottlePair, ThrottleUpdate
from socksauth.store.throttle import SqlThrottleStore

WINDOW = 900.0


def update(
    username: str, address: str, failures: int, now: float, **values: object
) -> ThrottleUpdate:
    fields: dict[str, object] = {
        "username": username,
        "address": address,
        "failures": failures,
        "last_failure_at": now,
        "locked_until": 0.0,
        "lockouts": 0,
        "day_failures": failures,
        "day_started_at": now,
        "recent": (b"\x01" * 16,),
    }
    locked = bool(values.pop("locked", False))
    fields.update(values)
    return ThrottleUpdate(pair=ThrottlePair(**fields), locked=locked)  # type: ignore[arg-type]


async def test_concurrent_writers_add_their_failures_and_none_is_lost(engine: AsyncEngine) -> None:
    store, now = SqlThrottleStore(engine), time.time()
    await asyncio.gather(
        *(store.record([update("alice", "192.0.2.1", 1, now)], now, WINDOW) for _ in range(20))
    )
    (pair,) = await store.pairs({("alice", "192.0.2.1")})
    assert pair.failures == 20 and pair.day_failures == 20
    assert pair.recent == (b"\x01" * 16,)


async def test_a_pair_quiet_for_the_window_starts_afresh(engine: AsyncEngine) -> None:
    store, now = SqlThrottleStore(engine), time.time()
    await store.record([update("alice", "192.0.2.1", 7, now - WINDOW - 1)], now, WINDOW)
    (pair,) = await store.record([update("alice", "192.0.2.1", 1, now)], now, WINDOW)
    assert pair.failures == 1


async def test_a_lock_is_kept_logged_as_an_event_and_bumps_the_revision(
    engine: AsyncEngine,
) -> None:
    store, feed, now = SqlThrottleStore(engine), SqlChangeFeed(engine), time.time()
    before, first_event = await feed.revision(), await store.last_event_id()
    await store.record(
        [update("alice", "192.0.2.1", 10, now, locked_until=now + 60, lockouts=1, locked=True)],
        now,
        WINDOW,
    )
    (pair,) = await store.record([update("alice", "192.0.2.1", 0, now)], now, WINDOW)
    assert pair.locked_until == now + 60 and pair.lockouts == 1
    assert await feed.revision() > before
    (event,) = await store.events_after(first_event)
    assert (event.kind, event.username, event.network) == ("lock", "alice", "192.0.2.1")
    assert [pair.username for pair in await store.active(now, WINDOW)] == ["alice"]


async def test_clear_by_user_by_network_or_both(engine: AsyncEngine) -> None:
    store, now = SqlThrottleStore(engine), time.time()
    await store.record(
        [
            update(name, address, 3, now)
            for name in ("alice", "bob")
            for address in ("192.0.2.1", "198.51.100.7", "2001:db8:1:2::/64")
        ],
        now,
        WINDOW,
    )
    assert await store.clear("alice", "192.0.2.0/24") == 1
    assert await store.clear(None, "2001:db8::/32") == 2
    assert await store.clear("bob", None) == 2
    remaining = {(pair.username, pair.address) for pair in await store.active(now, WINDOW)}
    assert remaining == {("alice", "198.51.100.7")}
    events = await store.events_after(0)
    assert [(e.kind, e.username, e.network) for e in events][-3:] == [
        ("clear", "alice", "192.0.2.0/24"),
        ("clear", None, "2001:db8::/32"),
        ("clear", "bob", None),
    ]


async def test_purge_drops_quiet_rows_and_caps_the_rest(engine: AsyncEngine) -> None:
    store, now = SqlThrottleStore(engine), time.time()
    old = [update(f"old{index}", "192.0.2.1", 1, now - 2 * WINDOW) for index in range(5)]
    await store.record(old, now - 2 * WINDOW, WINDOW)
    fresh = [update(f"user{index}", "192.0.2.1", 1, now - index) for index in range(30)]
    await store.record(fresh, now, WINDOW)
    assert await store.purge(now, WINDOW, 86_400.0, max_rows=20) == 15
    names = {pair.username for pair in await store.active(now, WINDOW)}
    assert names == {f"user{index}" for index in range(20)}  # the newest 20


async def test_every_node_gets_the_same_key(engine: AsyncEngine) -> None:
    keys = await asyncio.gather(*(SqlThrottleStore(engine).secret() for _ in range(5)))
    assert len(set(keys)) == 1 and len(keys[0]) == 32


async def test_clear_keeps_the_familiar_standing_and_a_success_resets_the_pair(
    engine: AsyncEngine,
) -> None:
    store, now = SqlThrottleStore(engine), time.time()
    success = ThrottleUpdate(
        pair=update("alice", "192.0.2.1", 0, now, familiar_at=now).pair, succeeded=True
    )
    await store.record([success], now, WINDOW)
    await store.record([update("alice", "192.0.2.1", 12, now, locked_until=now + 60)], now, WINDOW)
    assert await store.clear("alice", None) == 1
    (pair,) = await store.pairs({("alice", "192.0.2.1")})
    assert (pair.failures, pair.locked_until, pair.familiar_at) == (0, 0.0, now)
    assert await store.active(now, WINDOW) == []
    await store.record([update("alice", "192.0.2.1", 4, now)], now, WINDOW)
    (pair,) = await store.record([success], now, WINDOW)
    assert (pair.failures, pair.recent, pair.familiar_at) == (0, (), now)
