"""CONNECT's outbound side over real sockets: replies for targets that fail, IPv6 targets,
and the BND.ADDR/BND.PORT of the success reply."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
from e2e import (
    EchoServer,
    RunningProxy,
    assert_serves_a_good_client,
    closed_port,
    ipv6_loopback_available,
    login,
    open_tunnel,
    raw_connection,
    read_exactly,
    read_reply,
    read_until_closed,
    request,
    running_echo_server,
    with_timeout,
)


async def connect_reply(proxy_port: int, host: str, port: int) -> tuple[int, bytes]:
    """(REP for CONNECT host:port as alice, what follows the reply until the server's FIN)."""
    async with raw_connection(proxy_port) as (reader, writer):
        await login(reader, writer)
        writer.write(request(host, port))
        reply = await read_reply(reader)
        return reply.reply, await read_until_closed(reader)


async def test_connect_to_a_closed_loopback_port_gets_connection_refused(
    proxy: RunningProxy, echo_server: EchoServer
) -> None:
    with closed_port() as sock:
        port = sock.getsockname()[1]
        assert await connect_reply(proxy.port, "127.0.0.1", port) == (0x05, b"")
    await assert_serves_a_good_client(proxy.port, echo_server)


async def test_connect_to_a_name_that_does_not_resolve_gets_host_unreachable(
    proxy: RunningProxy, echo_server: EchoServer
) -> None:
    # RFC 6761 §6.4: .invalid never resolves.
    assert await connect_reply(proxy.port, "foo.invalid", 80) == (0x04, b"")
    await assert_serves_a_good_client(proxy.port, echo_server)


async def test_connect_by_name_reaches_a_loopback_target(
    proxy: RunningProxy, echo_server: EchoServer
) -> None:
    reader, writer, reply = await open_tunnel(proxy.port, "localhost", echo_server.port)
    try:
        assert reply.reply == 0
        writer.write(b"by name")
        assert await read_exactly(reader, 7) == b"by name"
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def ipv6_echo_server() -> AsyncIterator[EchoServer]:
    if not ipv6_loopback_available():
        pytest.skip("no IPv6 loopback (::1) on this machine")
    async with running_echo_server("::1") as echo:
        yield echo


async def test_connect_to_an_ipv6_loopback_target_works(proxy: RunningProxy) -> None:
    async with ipv6_echo_server() as echo:
        reader, writer, reply = await open_tunnel(proxy.port, "::1", echo.port)
        try:
            assert reply.reply == 0
            await with_timeout(echo.accepted.wait())
            # Dialled over IPv6, so the reply's bound address is the IPv6 loopback.
            assert (reply.host, reply.port) == echo.peers[0][:2]
            assert reply.host == "::1"
            writer.write(b"over IPv6")
            assert await read_exactly(reader, 9) == b"over IPv6"
        finally:
            writer.close()


async def test_connect_to_a_closed_ipv6_port_gets_connection_refused(
    proxy: RunningProxy,
) -> None:
    if not ipv6_loopback_available():
        pytest.skip("no IPv6 loopback (::1) on this machine")
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        assert await connect_reply(proxy.port, "::1", sock.getsockname()[1]) == (0x05, b"")


async def test_the_success_reply_carries_the_outbound_address_the_target_sees(
    proxy: RunningProxy, echo_server: EchoServer
) -> None:
    _, writer, reply = await open_tunnel(proxy.port, echo_server.host, echo_server.port)
    try:
        assert reply.reply == 0
        await with_timeout(echo_server.accepted.wait())
        # RFC 1928 §6: BND.ADDR/BND.PORT is the address the server used to reach the target,
        # which is the peer address the target observes; not the proxy's listening port.
        assert len(echo_server.peers) == 1
        assert (reply.host, reply.port) == echo_server.peers[0]
        assert reply.port != proxy.port
    finally:
        writer.close()
