"""SqlConnectionLeases: a per-user connection limit held by several nodes together, on SQLite
and PostgreSQL."""

from __future__ import annotations

import asyncio

from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.store.database import create_engine
from socksauth.store.leases import SqlConnectionLeases
from socksauth.store.users import SqlUserStore


async def test_the_limit_counts_the_connections_of_every_node(
    engine: AsyncEngine, database_url: str
) -> None:
    await SqlUserStore(engine).add_user("alice", "$argon2id$a")
    other_engine = create_engine(database_url)
    try:
        async with (
            SqlConnectionLeases(engine, "node-a") as a,
            SqlConnectionLeases(other_engine, "node-b") as b,
        ):
            assert await a.acquire("alice", 2)
            assert await b.acquire("alice", 2)
            assert not await a.acquire("alice", 2)
            assert not await b.acquire("alice", 2)
            assert await b.acquire("bob", 2)  # per user
            assert await a.count("alice") == 2
            a.release("alice")
            await a.flush()
            assert await a.count("alice") == 1
            assert await b.acquire("alice", 2)
        # A node that stops takes its leases with it.
        async with SqlConnectionLeases(engine, "node-c") as c:
            assert await c.count("alice") == 0
    finally:
        await other_engine.dispose()


async def test_concurrent_takers_on_two_nodes_never_exceed_the_limit(
    engine: AsyncEngine, database_url: str
) -> None:
    await SqlUserStore(engine).add_user("alice", "$argon2id$a")
    other_engine = create_engine(database_url)
    try:
        async with (
            SqlConnectionLeases(engine, "node-a") as a,
            SqlConnectionLeases(other_engine, "node-b") as b,
        ):
            results = await asyncio.gather(
                *(node.acquire("alice", 3) for _ in range(8) for node in (a, b))
            )
            assert sum(results) == 3
            assert await a.count("alice") == 3
    finally:
        await other_engine.dispose()


async def test_a_dead_nodes_leases_stop_counting_once_stale(engine: AsyncEngine) -> None:
    await SqlUserStore(engine).add_user("alice", "$argon2id$a")
    dead = SqlConnectionLeases(engine, "node-dead")
    # Taken, never released nor renewed: as a node that was killed leaves them.
    assert await dead.acquire("alice", 1)
    async with SqlConnectionLeases(engine, "node-live", stale_after_seconds=0.5) as live:
        assert not await live.acquire("alice", 1)
        await asyncio.sleep(0.6)
        assert await live.acquire("alice", 1)


async def test_a_restarted_node_drops_the_leases_of_its_previous_life(engine: AsyncEngine) -> None:
    await SqlUserStore(engine).add_user("alice", "$argon2id$a")
    crashed = SqlConnectionLeases(engine, "node-a")
    assert await crashed.acquire("alice", 1)
    async with SqlConnectionLeases(engine, "node-a") as restarted:
        assert await restarted.count("alice") == 0
        assert await restarted.acquire("alice", 1)


async def test_renewing_keeps_a_nodes_leases_alive_and_drops_empty_rows(
    engine: AsyncEngine,
) -> None:
    await SqlUserStore(engine).add_user("alice", "$argon2id$a")
    async with SqlConnectionLeases(engine, "node-a", stale_after_seconds=0.5) as a:
        assert await a.acquire("alice", 5)
        assert await a.acquire("bob", 5)
        a.release("bob")
        await a.flush()
        await asyncio.sleep(0.3)
        await a.renew()
        await asyncio.sleep(0.3)
        assert await a.count("alice") == 1  # renewed 0.3 s ago: still counts
        assert await a.count("bob") == 0
