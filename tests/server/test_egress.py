"""Egress addresses on loopback: a user's tunnels and datagrams leave from its addresses (the
target sees 127.0.0.2 / 127.0.0.3 as the peer), round robin or sticky per session key in the
username, from named pools; an address that is not local gets reply 0x01 and a warning."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from e2e import (
    ALICE,
    ALICE_PASSWORD,
    BOB,
    BOB_PASSWORD,
    UDP_ASSOCIATE,
    WAIT_SECONDS,
    EchoServer,
    ProxyFactory,
    eventually,
    login,
    raw_connection,
    read_exactly,
    read_reply,
    request,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth import app
from socksauth.auth import accounts
from socksauth.config import EgressPool, Settings, parse_egress_pool
from socksauth.errors import ConfigError
from socksauth.server.egress import EgressSelector, check_local, split_session
from socksauth.store.audit import SqlAuditStore
from socksauth.store.interfaces import AuditQuery, UserRecord
from socksauth.store.users import SqlUserStore

SECOND, THIRD = "127.0.0.2", "127.0.0.3"


def test_a_session_key_is_split_off_the_username() -> None:
    assert split_session("alice-session-abc123", "-session-") == ("alice", "abc123")
    assert split_session("alice", "-session-") == ("alice", None)
    # No key, an empty account or a key with other characters: the name as it is.
    assert split_session("alice-session-", "-session-") == ("alice-session-", None)
    assert split_session("-session-abc", "-session-") == ("-session-abc", None)
    assert split_session("alice-session-a b", "-session-") == ("alice-session-a b", None)
    assert split_session("alice_s_k1", "_s_") == ("alice", "k1")
    assert split_session("alice-session-abc", "") == ("alice-session-abc", None)


def test_egress_pools_parse_and_bad_ones_are_named() -> None:
    assert parse_egress_pool("crawl=127.0.0.2, 127.0.0.3") == EgressPool(
        name="crawl", addresses=(SECOND, THIRD)
    )
    for text in ("crawl", "=127.0.0.2", "crawl=127.0.0.2,nope", "a b=127.0.0.2"):
        with pytest.raises(ConfigError, match="egress pool"):
            parse_egress_pool(text)
    with pytest.raises(ConfigError, match="twice"):
        Settings(database_url="sqlite+aiosqlite://", egress_pools=(
            EgressPool(name="a", addresses=(SECOND,)), EgressPool(name="a", addresses=(THIRD,))
        ))  # fmt: skip


def _user(*egress: str) -> UserRecord:
    now = datetime.now(UTC)
    return UserRecord(username=ALICE, password_hash="x", enabled=True, created_at=now,
                      updated_at=now, last_login_at=None, egress=egress)  # fmt: skip


def test_sessions_keep_their_address_for_the_ttl_after_the_last_use() -> None:
    clock = [0.0]
    selector = EgressSelector((), session_ttl_seconds=10.0, clock=lambda: clock[0])
    user = _user(SECOND, THIRD)
    first = selector.choose(user, "k1")
    assert first is not None and first.chosen == SECOND
    for _ in range(3):
        clock[0] += 9.0  # each use renews the TTL
        again = selector.choose(user, "k1")
        assert again is not None and again.chosen == SECOND
    other = selector.choose(user, "k2")
    assert other is not None and other.chosen == THIRD
    clock[0] += 10.5  # k1 unused for longer than the TTL: chosen anew (the next in turn)
    renewed = selector.choose(user, "k1")
    assert renewed is not None and renewed.chosen == SECOND
    # Unknown pools give an egress without addresses: the request fails (0x01).
    empty = selector.choose(_user("pool:nowhere"), None)
    assert empty is not None and empty.chosen is None


def test_the_locality_check_names_addresses_that_are_not_here_and_unknown_pools(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="socksauth")
    # 192.0.2.0/24 (TEST-NET-1) is on no host: binding it fails locally, nothing is sent.
    warnings = check_local(
        (EgressPool(name="p", addresses=(SECOND, "192.0.2.10")),), {THIRD, "pool:q"}
    )
    assert len(warnings) == 2
    assert "pool:q: no such pool" in warnings[0]
    assert "192.0.2.10 is not local" in warnings[1]
    assert [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING] == warnings


async def peer_of(port: int, echo: EchoServer, username: str = ALICE) -> tuple[str, str]:
    """(the address the echo server saw the tunnel come from, the reply's BND.ADDR)."""
    seen = len(echo.peers)
    async with raw_connection(port) as (reader, writer):
        await login(reader, writer, username, ALICE_PASSWORD if username != BOB else BOB_PASSWORD)
        writer.write(request(echo.host, echo.port))
        reply = await read_reply(reader)
        assert reply.reply == 0x00
        writer.write(b"ping")
        assert await read_exactly(reader, 4) == b"ping"
    await eventually(lambda: len(echo.peers) > seen)
    return echo.peers[seen][0], reply.host


async def test_tunnels_leave_from_the_users_addresses_in_turn(
    start_proxy: ProxyFactory, user_store: SqlUserStore, echo_server: EchoServer
) -> None:
    await accounts.set_limits(user_store, ALICE, egress=[SECOND, THIRD])
    async with start_proxy() as proxy:
        peers = [await peer_of(proxy.port, echo_server) for _ in range(4)]
        # bob has no egress: the system's choice (127.0.0.1 towards a 127.0.0.1 target).
        assert (await peer_of(proxy.port, echo_server, BOB))[0] == "127.0.0.1"
    assert [seen for seen, _ in peers] == [SECOND, THIRD, SECOND, THIRD]
    # The reply's BND.ADDR is the address the proxy connected from (RFC 1928 §6).
    assert [bound for _, bound in peers] == [SECOND, THIRD, SECOND, THIRD]


async def test_a_session_key_keeps_its_address_and_logs_in_as_the_account(
    start_proxy: ProxyFactory,
    user_store: SqlUserStore,
    echo_server: EchoServer,
    engine: AsyncEngine,
) -> None:
    await accounts.set_limits(user_store, ALICE, egress=[SECOND, THIRD])
    async with start_proxy() as proxy:
        abc = [(await peer_of(proxy.port, echo_server, "alice-session-abc"))[0] for _ in range(3)]
        xyz = [(await peer_of(proxy.port, echo_server, "alice-session-xyz"))[0] for _ in range(3)]
        again = (await peer_of(proxy.port, echo_server, "alice-session-abc"))[0]
    assert len(set(abc)) == 1 and len(set(xyz)) == 1, (abc, xyz)
    assert set(abc) != set(xyz)  # the second key took the next address in turn
    assert again == abc[0]
    entries = await SqlAuditStore(engine).find_entries(AuditQuery(limit=None))
    assert {entry.username for entry in entries} == {ALICE}


async def test_a_session_key_is_forgotten_after_its_ttl(
    start_proxy: ProxyFactory, user_store: SqlUserStore, echo_server: EchoServer
) -> None:
    await accounts.set_limits(user_store, ALICE, egress=[SECOND, THIRD])
    async with start_proxy(egress_session_ttl_seconds=0.3) as proxy:
        first = (await peer_of(proxy.port, echo_server, "alice-session-k"))[0]
        assert (await peer_of(proxy.port, echo_server, "alice-session-k"))[0] == first
        await asyncio.sleep(0.5)
        # Chosen anew: the next address in alice's turn.
        assert (await peer_of(proxy.port, echo_server, "alice-session-k"))[0] != first


async def test_the_session_syntax_is_a_setting(
    start_proxy: ProxyFactory, user_store: SqlUserStore, echo_server: EchoServer
) -> None:
    async with start_proxy(session_separator="__") as proxy:
        assert (await peer_of(proxy.port, echo_server, "alice__s1"))[0] == "127.0.0.1"
        async with raw_connection(proxy.port) as (reader, writer):
            writer.write(b"\x05\x01\x02")
            assert await read_exactly(reader, 2) == b"\x05\x02"
            name = b"alice-session-abc"
            secret = ALICE_PASSWORD.encode()
            writer.write(bytes((1, len(name))) + name + bytes((len(secret),)) + secret)
            assert await read_exactly(reader, 2) == b"\x01\x01"  # no such account


async def test_a_named_pool_serves_the_users_that_name_it(
    start_proxy: ProxyFactory, user_store: SqlUserStore, echo_server: EchoServer
) -> None:
    await accounts.set_limits(user_store, BOB, egress=["pool:crawl"])
    pools = (EgressPool(name="crawl", addresses=(THIRD,)),)
    async with start_proxy(egress_pools=pools) as proxy:
        assert (await peer_of(proxy.port, echo_server, BOB))[0] == THIRD


async def test_an_address_that_is_not_local_gets_reply_1_and_a_warning_not_a_crash(
    start_proxy: ProxyFactory,
    user_store: SqlUserStore,
    echo_server: EchoServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="socksauth")
    # 192.0.2.10 (TEST-NET-1) is not on this host: the bind fails before any packet.
    await accounts.set_limits(user_store, ALICE, egress=["192.0.2.10"])
    async with start_proxy() as proxy:
        assert any("192.0.2.10 is not local" in r.getMessage() for r in caplog.records)
        async with raw_connection(proxy.port) as (reader, writer):
            await login(reader, writer)
            writer.write(request(echo_server.host, echo_server.port))
            assert (await read_reply(reader)).reply == 0x01
        assert any(
            r.levelno == logging.WARNING and "egress address 192.0.2.10" in r.getMessage()
            for r in caplog.records
        )
        async with raw_connection(proxy.port) as (reader, writer):
            await login(reader, writer)
            writer.write(request("0.0.0.0", 0, UDP_ASSOCIATE))
            assert (await read_reply(reader)).reply == 0x01
        # Everyone else is served as before.
        assert (await peer_of(proxy.port, echo_server, BOB))[0] == "127.0.0.1"
    assert echo_server.peers[-1][0] == "127.0.0.1"


class _UdpEcho(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.sources: list[tuple[Any, ...]] = []
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.sources.append(addr)
        assert self.transport is not None
        self.transport.sendto(data, addr)


@contextlib.asynccontextmanager
async def udp_echo() -> AsyncIterator[tuple[_UdpEcho, int]]:
    transport, echo = await asyncio.get_running_loop().create_datagram_endpoint(
        _UdpEcho, local_addr=("127.0.0.1", 0)
    )
    try:
        yield echo, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


async def test_datagrams_leave_from_the_users_address(
    start_proxy: ProxyFactory, user_store: SqlUserStore
) -> None:
    await accounts.set_limits(user_store, ALICE, egress=[THIRD])
    async with (
        start_proxy() as proxy,
        udp_echo() as (echo, echo_port),
        raw_connection(proxy.port) as (reader, writer),
    ):
        await login(reader, writer)
        writer.write(request("0.0.0.0", 0, UDP_ASSOCIATE))
        reply = await read_reply(reader)
        assert reply.reply == 0x00
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            client.bind(("127.0.0.1", 0))
            client.settimeout(WAIT_SECONDS)
            header = b"\x00\x00\x00\x01" + socket.inet_aton("127.0.0.1") + echo_port.to_bytes(2)
            client.sendto(header + b"udp ping", (reply.host, reply.port))
            answer = await asyncio.to_thread(client.recv, 65535)
        finally:
            client.close()
        assert answer.endswith(b"udp ping")
        assert echo.sources[0][0] == THIRD


async def test_a_reload_checks_the_new_pools(
    start_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="socksauth")
    async with start_proxy() as proxy:
        pools = (EgressPool(name="p", addresses=(SECOND, "192.0.2.11")),)
        # What SIGHUP does, with the settings applied first (reload_server would otherwise
        # also reconfigure logging, out of caplog's sight).
        await proxy.server.reload(dataclasses.replace(proxy.settings, egress_pools=pools))
        assert await app.reload_server(proxy.server, None)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("192.0.2.11 is not local" in w for w in warnings), warnings
    assert not any(SECOND in w for w in warnings)
