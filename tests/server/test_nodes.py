"""Several nodes on one database, in one process, on SQLite and PostgreSQL: an account or a rule
changed anywhere applies on every node within 2 s (NOTIFY on PostgreSQL, polling on SQLite),
and a per-user connection limit holds for all nodes together."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from e2e import (
    ALICE,
    ALICE_PASSWORD,
    USERNAME_PASSWORD,
    EchoServer,
    ProxyFactory,
    RunningProxy,
    credentials,
    greeting,
    login,
    raw_connection,
    read_exactly,
    read_reply,
    read_until_closed,
    reply_to,
    request,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.auth import accounts
from socksauth.store.interfaces import NewRule
from socksauth.store.rules import SqlRuleStore
from socksauth.store.users import SqlUserStore


@contextlib.asynccontextmanager
async def two_nodes(start_proxy: ProxyFactory) -> AsyncIterator[tuple[RunningProxy, RunningProxy]]:
    async with (
        start_proxy(node_name="node-a") as a,
        start_proxy(node_name="node-b", allow_loopback=False) as b,
    ):
        yield a, b


async def login_status(port: int, password: str) -> int:
    """RFC 1929 STATUS for alice with ``password`` (0 = success)."""
    async with raw_connection(port) as (reader, writer):
        writer.write(greeting(USERNAME_PASSWORD) + credentials(ALICE, password))
        answer = await read_exactly(reader, 4)
        return answer[3]


async def test_a_password_changed_through_one_node_applies_on_every_node_within_2_seconds(
    start_proxy: ProxyFactory, user_store: SqlUserStore
) -> None:
    async with two_nodes(start_proxy) as (a, b):
        # Both nodes have alice cached from a first login.
        assert await login_status(a.port, ALICE_PASSWORD) == 0
        assert await login_status(b.port, ALICE_PASSWORD) == 0
        await accounts.change_password(user_store, ALICE, "changed-on-node-a-0001")
        delays = [await a.caught_up(), await b.caught_up()]
        assert max(delays) < 2.0, delays
        for node in (a, b):
            assert await login_status(node.port, ALICE_PASSWORD) != 0
            assert await login_status(node.port, "changed-on-node-a-0001") == 0


async def test_a_rule_added_anywhere_applies_on_every_node_within_2_seconds(
    start_proxy: ProxyFactory, engine: AsyncEngine, echo_server: EchoServer
) -> None:
    async with two_nodes(start_proxy) as (a, b):
        for node in (a, b):
            assert await reply_to(node.port, echo_server.host, echo_server.port) == 0x00
        await SqlRuleStore(engine).add_rule(
            NewRule(action="deny", cidr=f"{echo_server.host}/32"), position=1
        )
        assert max(await a.caught_up(), await b.caught_up()) < 2.0
        for node in (a, b):
            assert await reply_to(node.port, echo_server.host, echo_server.port) == 0x02


async def test_a_per_user_connection_limit_holds_across_nodes(
    start_proxy: ProxyFactory, user_store: SqlUserStore, echo_server: EchoServer
) -> None:
    await accounts.set_limits(user_store, ALICE, max_connections=2)
    async with two_nodes(start_proxy) as (a, b), contextlib.AsyncExitStack() as tunnels:
        for node in (a, b):
            reader, writer = await tunnels.enter_async_context(raw_connection(node.port))
            await login(reader, writer)
            writer.write(request(echo_server.host, echo_server.port))
            assert (await read_reply(reader)).reply == 0x00
        # Two open, one on each node: a third is refused on either.
        for node in (a, b):
            assert await reply_to(node.port, echo_server.host, echo_server.port) == 0x02
        await tunnels.aclose()
        # The slots come back once the nodes have written the releases (in the background).
        replies: list[int] = []

        async def retry() -> bool:
            replies.append(await reply_to(b.port, echo_server.host, echo_server.port))
            return replies[-1] == 0x00

        for _ in range(40):
            if await retry():
                break
            await asyncio.sleep(0.05)
        assert replies[-1] == 0x00, replies


async def test_a_refused_over_limit_connection_is_closed_after_the_reply(
    start_proxy: ProxyFactory, user_store: SqlUserStore, echo_server: EchoServer
) -> None:
    await accounts.set_limits(user_store, ALICE, max_connections=1)
    async with two_nodes(start_proxy) as (a, b), raw_connection(a.port) as (reader, writer):
        await login(reader, writer)
        writer.write(request(echo_server.host, echo_server.port))
        assert (await read_reply(reader)).reply == 0x00
        async with raw_connection(b.port) as (other_reader, other_writer):
            await login(other_reader, other_writer)
            other_writer.write(request(echo_server.host, echo_server.port))
            assert (await read_reply(other_reader)).reply == 0x02
            assert await read_until_closed(other_reader) == b""


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
async def test_a_lost_listen_connection_is_replaced_at_once_not_at_the_next_poll(
    start_proxy: ProxyFactory, user_store: SqlUserStore, engine: AsyncEngine
) -> None:
    # Polling so slow that only NOTIFY can bring the change within the test's 2 s.
    async with start_proxy(change_poll_seconds=60.0) as proxy:
        assert await login_status(proxy.port, ALICE_PASSWORD) == 0
        async with engine.connect() as conn:
            killed = await conn.scalar(
                text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
                )
            )
        assert killed == 1
        # The proxy notices the loss and listens anew; then a change arrives by NOTIFY.
        await asyncio.sleep(0.5)
        await accounts.change_password(user_store, ALICE, "after-the-reconnect-01")
        assert await proxy.caught_up(timeout=2.0) < 2.0
        assert await login_status(proxy.port, ALICE_PASSWORD) != 0
