"""UserCache in front of the real user store, on SQLite and PostgreSQL: a known account costs
no query, a change is seen after invalidate(), and a change reported during a query is never
cached over."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.auth.user_cache import UserCache
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
