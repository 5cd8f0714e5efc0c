"""ProxyServer over real sockets: many clients at once, and a stop that closes every tunnel."""

from __future__ import annotations

import asyncio
import contextlib

from e2e import (
    EchoServer,
    ProxyFactory,
    RunningProxy,
    assert_serves_a_good_client,
    open_tunnel,
    read_exactly,
    read_until_closed,
    with_timeout,
)


async def test_concurrent_clients_are_served_independently(
    proxy: RunningProxy, echo_server: EchoServer
) -> None:
    await with_timeout(
        asyncio.gather(*(assert_serves_a_good_client(proxy.port, echo_server) for _ in range(8)))
    )
    assert len(echo_server.peers) == 8


async def test_stopping_the_server_closes_open_tunnels_on_both_sides(
    start_proxy: ProxyFactory, echo_server: EchoServer
) -> None:
    async with start_proxy() as proxy:
        reader, writer, reply = await open_tunnel(proxy.port, echo_server.host, echo_server.port)
        assert reply.reply == 0
        writer.write(b"open")
        assert await read_exactly(reader, 4) == b"open"
    try:
        # The client sees its connection end (FIN or reset) ...
        with contextlib.suppress(ConnectionResetError):
            await read_until_closed(reader)
        # ... and so does the target: the proxy's outbound socket is closed, not leaked.
        await with_timeout(echo_server.ended.wait())
    finally:
        writer.close()
