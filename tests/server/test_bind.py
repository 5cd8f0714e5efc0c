"""BIND (RFC 1928 §6) over real loopback sockets with a raw client: two replies, the inbound
connection relayed both ways, an unexpected peer refused, the timeout reply, the listening
socket closed when the client leaves."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import pytest
from e2e import (
    BIND,
    WAIT_SECONDS,
    CommandReply,
    ProxyFactory,
    RunningProxy,
    allow_loopback_targets,
    eventually,
    ipv6_loopback_available,
    login,
    raw_connection,
    read_exactly,
    read_reply,
    read_until_closed,
    request,
)

from socksauth import app
from socksauth.config import ListenAddress, Settings
from socksauth.store.users import SqlUserStore

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@contextlib.asynccontextmanager
async def binding(
    proxy_port: int, expected: tuple[str, int] = ("127.0.0.1", 0), proxy_host: str = "127.0.0.1"
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter, CommandReply]]:
    """Log in as alice and BIND; yields the control connection and the first reply."""
    async with raw_connection(proxy_port, proxy_host) as (reader, writer):
        await login(reader, writer)
        writer.write(request(*expected, BIND))
        yield reader, writer, await read_reply(reader)


@contextlib.asynccontextmanager
async def peer_connection(host: str, port: int) -> AsyncIterator[Stream]:
    """The application server's inbound connection to the proxy's BIND port."""
    async with raw_connection(port, host) as stream:
        yield stream


async def assert_relays_both_ways(client: Stream, peer: Stream) -> None:
    client_reader, client_writer = client
    peer_reader, peer_writer = peer
    peer_writer.write(b"hello from the peer")
    assert await read_exactly(client_reader, 19) == b"hello from the peer"
    client_writer.write(b"hello from the client")
    assert await read_exactly(peer_reader, 21) == b"hello from the client"
    # Half-close passes through, then the other side finishes.
    client_writer.write_eof()
    assert await read_until_closed(peer_reader) == b""
    peer_writer.close()
    assert await read_until_closed(client_reader) == b""


async def test_bind_sends_two_replies_and_relays_the_expected_peer_both_ways(
    proxy: RunningProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="socksauth")
    async with binding(proxy.port, ("127.0.0.1", 0)) as (reader, writer, first):
        assert (first.reply, first.host) == (0x00, "127.0.0.1")
        assert first.port not in (0, proxy.port)
        async with peer_connection(first.host, first.port) as (peer_reader, peer_writer):
            second = await read_reply(reader)
            peer_address = peer_writer.get_extra_info("sockname")
            # The second reply names the connecting host.
            assert (second.reply, second.host, second.port) == (0x00, *peer_address[:2])
            await assert_relays_both_ways((reader, writer), (peer_reader, peer_writer))

    def lines() -> list[str]:
        return [r.getMessage() for r in caplog.records if " BIND " in r.getMessage()]

    await eventually(lambda: bool(lines()), what="the binding's log line")
    assert " out=21 in=19 " in lines()[0] and " closed" in lines()[0]


async def test_bytes_the_client_sends_before_the_peer_connects_reach_the_peer(
    proxy: RunningProxy,
) -> None:
    async with binding(proxy.port, ("127.0.0.1", 0)) as (reader, writer, first):
        writer.write(b"early bytes")
        async with peer_connection(first.host, first.port) as (peer_reader, _):
            assert (await read_reply(reader)).reply == 0x00
            assert await read_exactly(peer_reader, 11) == b"early bytes"


async def test_an_all_zeros_address_accepts_any_peer(proxy: RunningProxy) -> None:
    async with binding(proxy.port, ("0.0.0.0", 0)) as (reader, writer, first):
        assert first.reply == 0x00
        async with peer_connection(first.host, first.port) as peer:
            assert (await read_reply(reader)).reply == 0x00
            await assert_relays_both_ways((reader, writer), peer)


async def test_a_domain_name_is_resolved_to_the_peers_it_may_be(proxy: RunningProxy) -> None:
    async with binding(proxy.port, ("localhost", 0)) as (reader, writer, first):
        assert first.reply == 0x00
        async with peer_connection(first.host, first.port) as peer:
            second = await read_reply(reader)
            assert (second.reply, second.host) == (0x00, "127.0.0.1")
            await assert_relays_both_ways((reader, writer), peer)


async def test_an_unexpected_peer_is_refused_and_the_binding_times_out(
    start_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="socksauth")
    # The client expects 127.0.0.2 (nothing is sent there); 127.0.0.1 connects instead.
    async with (
        start_proxy(bind_timeout_seconds=1.0) as proxy,
        binding(proxy.port, ("127.0.0.2", 0)) as (reader, _, first),
    ):
        assert first.reply == 0x00
        async with peer_connection(first.host, first.port) as (peer_reader, _):
            # Refused: reset (or closed) at once, never relayed.
            with contextlib.suppress(ConnectionResetError):
                assert await read_until_closed(peer_reader) == b""
        # The binding kept waiting for 127.0.0.2 until the deadline: TTL expired.
        second = await read_reply(reader)
        assert second.reply == 0x06
        assert await read_until_closed(reader) == b""
    assert "refused a connection from 127.0.0.1" in caplog.text


async def test_nobody_connecting_in_time_gets_reply_6_and_close(
    start_proxy: ProxyFactory,
) -> None:
    async with (
        start_proxy(bind_timeout_seconds=0.2) as proxy,
        binding(proxy.port) as (reader, _, first),
    ):
        assert first.reply == 0x00
        second = await read_reply(reader)
        assert (second.reply, second.host, second.port) == (0x06, "0.0.0.0", 0)
        assert await read_until_closed(reader) == b""


async def test_the_listening_socket_closes_when_the_client_leaves(proxy: RunningProxy) -> None:
    async with binding(proxy.port) as (_, _, first):
        assert first.reply == 0x00
    await eventually(lambda: proxy.server.active_clients == 0, what="the client to end")
    with pytest.raises(ConnectionRefusedError):
        async with asyncio.timeout(WAIT_SECONDS):
            await asyncio.open_connection(first.host, first.port)


async def test_bind_switched_off_gets_reply_7(start_proxy: ProxyFactory) -> None:
    async with start_proxy(bind_enabled=False) as proxy, binding(proxy.port) as (reader, _, first):
        assert first.reply == 0x07
        assert await read_until_closed(reader) == b""


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback (::1) here")
async def test_bind_over_ipv6_listens_on_ipv6_and_names_the_ipv6_peer(
    database_url: str, user_store: SqlUserStore
) -> None:
    await allow_loopback_targets(database_url)
    settings = Settings(database_url=database_url, listen=(ListenAddress(host="::1", port=0),))
    async with (
        app.running_server(settings) as server,
        binding(server.bound[0].port, ("::1", 0), "::1") as (reader, writer, first),
    ):
        assert (first.reply, first.host) == (0x00, "::1")
        async with peer_connection("::1", first.port) as peer:
            second = await read_reply(reader)
            assert (second.reply, second.host) == (0x00, "::1")
            assert second.port == peer[1].get_extra_info("sockname")[1]
            await assert_relays_both_ways((reader, writer), peer)
