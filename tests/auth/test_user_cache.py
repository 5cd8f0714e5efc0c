"""UserCache in front of the real user store, on SQLite and PostgreSQL: a known account costs
no query, a change is seen after invalidate(), and a change reported during a query is never
cached over."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.auth.user_cache import LOOKUPS_AT_ONCE, UserCache
from socksauth.store.interfaces import UserRecord
from socksauth.store.models import UserRow
from socksauth.store.users import SqlUserStore


async def test_a_cached_account_is_served_without_the_store_until_invalidated(
    engine: AsyncEngine,
) -> None:
    store = SqlUserStore(engine)
    await store.add_user("alice", "$argon2id$a")
    cache = UserCache(store)
    first = await cache.get_user("alice")
    assert first is not None and first.enabled
    await store.set_enabled("alice", False)
    # Until the change feed speaks, the record in memory answers.
    cached = await cache.get_user("alice")
    assert cached is not None and cached.enabled
    cache.invalidate()
    now = await cache.get_user("alice")
    assert now is not None and not now.enabled


async def test_unknown_names_are_cached_too_and_bounded(engine: AsyncEngine) -> None:
    store = SqlUserStore(engine)
    cache = UserCache(store, max_entries=3)
    for name in ("u1", "u2", "u3", "u4"):
        assert await cache.get_user(name) is None
    assert len(cache) == 3
    await store.add_user("u4", "$argon2id$x")
    assert await cache.get_user("u4") is None  # cached as unknown
    cache.invalidate()
    assert await cache.get_user("u4") is not None


async def test_a_change_reported_while_a_query_runs_is_not_cached_over(
    engine: AsyncEngine,
) -> None:
    store = SqlUserStore(engine)
    await store.add_user("alice", "$argon2id$a")
    cache = UserCache(store)
    # The lookup starts, the change feed reports a change before it returns: the answer
    # (which may predate the change) is used once but not kept.
    lookup = asyncio.ensure_future(cache.get_user("alice"))
    await asyncio.sleep(0)
    cache.invalidate()
    async with engine.begin() as conn:
        await conn.execute(update(UserRow).where(UserRow.username == "alice").values(enabled=False))
    await lookup
    assert len(cache) == 0
    now = await cache.get_user("alice")
    assert now is not None and not now.enabled


async def test_a_rehash_and_login_times_pass_through(engine: AsyncEngine) -> None:
    store = SqlUserStore(engine)
    await store.add_user("alice", "$argon2id$a")
    cache = UserCache(store)
    assert await cache.get_user("alice") is not None
    await cache.replace_password_hash("alice", "$argon2id$a", "$argon2id$b")
    record = await cache.get_user("alice")
    assert record is not None and record.password_hash == "$argon2id$b"
    await cache.record_logins({"alice": datetime(2026, 11, 24, tzinfo=UTC)})
    stored = await store.get_user("alice")
    assert stored is not None and stored.last_login_at == datetime(2026, 11, 24, tzinfo=UTC)


class CountingStore(SqlUserStore):
    """The real store, counting the lookups in flight at once."""

    def __init__(self, engine: AsyncEngine) -> None:
        super().__init__(engine)
        self.in_flight = 0
        self.most_in_flight = 0
        self.lookups = 0
        self.names: list[str] = []

    async def get_user(self, username: str) -> UserRecord | None:
        self.in_flight += 1
        self.lookups += 1
        self.names.append(username)
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.005)  # a store that takes its time: lookups overlap
            return await super().get_user(username)
        finally:
            self.in_flight -= 1


async def test_a_storm_of_cold_lookups_reaches_the_store_two_at_a_time_about_once_per_name(
    engine: AsyncEngine,
) -> None:
    store = CountingStore(engine)
    for index in range(20):
        await store.add_user(f"u{index}", "$argon2id$x")
    cache = UserCache(store)
    names = [f"u{index % 20}" for index in range(100)]  # 100 logins of 20 accounts at once
    records = await asyncio.gather(*(cache.get_user(name) for name in names))
    assert all(record is not None for record in records)
    assert store.most_in_flight == LOOKUPS_AT_ONCE
    # A login that waited while its name was looked up uses that answer: about one query
    # per name (one more when a login of the name got its turn while the first was in
    # flight), not one per login.
    assert 20 <= store.lookups < len(names) // 2, " ".join(store.names)
