"""UDP ASSOCIATE (RFC 1928 §7) over real loopback sockets: PySocks and a raw client through
the proxy to a UDP echo server; source filtering, FRAG, unsolicited replies, the end of an
association with its control connection or after the idle timeout."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import socks
from e2e import (
    ALICE,
    ALICE_PASSWORD,
    UDP_ASSOCIATE,
    WAIT_SECONDS,
    CommandReply,
    ProxyFactory,
    RunningProxy,
    allow_loopback_targets,
    encode_address,
    eventually,
    ipv6_loopback_available,
    login,
    raw_connection,
    read_reply,
    read_until_closed,
    request,
)

from socksauth import app
from socksauth.config import ListenAddress, Settings
from socksauth.server.listener import ProxyServer
from socksauth.store.users import SqlUserStore

needs_ipv6 = pytest.mark.skipif(
    not ipv6_loopback_available(), reason="no IPv6 loopback (::1) on this machine"
)


# --- a UDP echo server and a UDP client -------------------------------------------------------


@dataclass
class UdpEcho(asyncio.DatagramProtocol):
    """Sends every datagram back to where it came from; remembers what it got from whom."""

    host: str = "127.0.0.1"
    port: int = 0
    received: list[tuple[bytes, tuple[Any, ...]]] = field(default_factory=list)
    transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.received.append((data, addr))
        assert self.transport is not None
        self.transport.sendto(data, addr)


@contextlib.asynccontextmanager
async def udp_echo(host: str = "127.0.0.1") -> AsyncIterator[UdpEcho]:
    echo = UdpEcho(host)
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: echo, local_addr=(host, 0)
    )
    echo.port = transport.get_extra_info("sockname")[1]
    try:
        yield echo
    finally:
        transport.close()


@pytest.fixture
async def echo() -> AsyncIterator[UdpEcho]:
    async with udp_echo() as server:
        yield server


class UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[bytes, tuple[Any, ...]]] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        self.queue.put_nowait((data, addr))

    def send(self, data: bytes, to: tuple[str, int]) -> None:
        assert self.transport is not None
        self.transport.sendto(data, to)

    async def receive(self) -> bytes:
        async with asyncio.timeout(WAIT_SECONDS):
            data, _ = await self.queue.get()
        return data

    @property
    def port(self) -> int:
        assert self.transport is not None
        port: int = self.transport.get_extra_info("sockname")[1]
        return port


@contextlib.asynccontextmanager
async def udp_client(host: str = "127.0.0.1") -> AsyncIterator[UdpClient]:
    transport, client = await asyncio.get_running_loop().create_datagram_endpoint(
        UdpClient, local_addr=(host, 0)
    )
    try:
        yield client
    finally:
        transport.close()


def header(host: str, port: int, fragment: int = 0) -> bytes:
    """RFC 1928 §7: RSV (2) | FRAG | ATYP | DST.ADDR | DST.PORT."""
    return bytes((0, 0, fragment)) + encode_address(host, port)


def split_reply_datagram(datagram: bytes) -> tuple[str, int, bytes]:
    """The source address and payload of a datagram the relay sent us (IPv4/IPv6 only)."""
    assert datagram[:3] == b"\x00\x00\x00"
    if datagram[3] == 1:
        host, rest = socket.inet_ntop(socket.AF_INET, datagram[4:8]), datagram[8:]
    else:
        assert datagram[3] == 4
        host, rest = socket.inet_ntop(socket.AF_INET6, datagram[4:20]), datagram[20:]
    (port,) = struct.unpack("!H", rest[:2])
    return host, port, rest[2:]


@contextlib.asynccontextmanager
async def association(
    proxy_port: int,
    declared: tuple[str, int] = ("0.0.0.0", 0),
    proxy_host: str = "127.0.0.1",
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter, CommandReply]]:
    """Log in as alice and UDP ASSOCIATE; yields the control connection and the reply."""
    async with raw_connection(proxy_port, proxy_host) as (reader, writer):
        await login(reader, writer)
        writer.write(request(*declared, UDP_ASSOCIATE))
        reply = await read_reply(reader)
        yield reader, writer, reply


def finished_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "socksauth.client" and " UDP_ASSOCIATE " in r.getMessage()
    ]


# --- PySocks: a real client ---------------------------------------------------------------------


def pysocks_round_trip(proxy_port: int, target: tuple[str, int], payload: bytes) -> Any:
    """Blocking: associate through the proxy as alice, send one datagram, receive one."""
    sock = socks.socksocket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.set_proxy(
            socks.SOCKS5, "127.0.0.1", proxy_port, username=ALICE, password=ALICE_PASSWORD
        )
        sock.settimeout(WAIT_SECONDS)
        sock.bind(("127.0.0.1", 0))  # PySocks sends UDP ASSOCIATE here
        sock.sendto(payload, target)
        return sock.recvfrom(65535)
    finally:
        sock.close()


async def test_pysocks_sends_a_datagram_to_an_ipv4_target_and_gets_the_reply(
    proxy: RunningProxy, echo: UdpEcho, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="socksauth")
    payload, source = await asyncio.to_thread(
        pysocks_round_trip, proxy.port, ("127.0.0.1", echo.port), b"ping over udp"
    )
    assert payload == b"ping over udp"
    assert source == ("127.0.0.1", echo.port)
    # The client closed its socket and so the control connection: the association ends,
    # counted each way (payload bytes, headers not included).
    await eventually(lambda: bool(finished_lines(caplog)), what="the association's log line")
    (line,) = finished_lines(caplog)
    assert f"user={ALICE} " in line
    assert " out=13 in=13 " in line
    assert " closed datagrams out=1 in=1 dropped=0" in line


@needs_ipv6
async def test_pysocks_reaches_an_ipv6_target(proxy: RunningProxy) -> None:
    async with udp_echo("::1") as echo6:
        payload, source = await asyncio.to_thread(
            pysocks_round_trip, proxy.port, ("::1", echo6.port), b"ping v6"
        )
    assert payload == b"ping v6"
    assert source == ("::1", echo6.port)


async def test_pysocks_reaches_a_target_by_domain_name(proxy: RunningProxy, echo: UdpEcho) -> None:
    # PySocks sends names unresolved (ATYP 3); the proxy resolves localhost to 127.0.0.1.
    payload, source = await asyncio.to_thread(
        pysocks_round_trip, proxy.port, ("localhost", echo.port), b"by name"
    )
    assert payload == b"by name"
    # The reply carries the address the datagram came from.
    assert source == ("127.0.0.1", echo.port)
    assert [data for data, _ in echo.received] == [b"by name"]


# --- a raw client: the reply, source filtering, drops -------------------------------------------


async def test_the_reply_names_the_address_the_client_reached_not_0_0_0_0(
    proxy: RunningProxy,
) -> None:
    async with association(proxy.port) as (_, _, reply):
        assert reply.reply == 0x00
        assert reply.host == "127.0.0.1"
        assert reply.port != 0


async def test_datagrams_from_another_port_than_the_declared_one_are_dropped(
    proxy: RunningProxy, echo: UdpEcho, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="socksauth")
    async with udp_client() as client, udp_client() as intruder:
        async with association(proxy.port, ("0.0.0.0", client.port)) as (_, writer, reply):
            relay = (reply.host, reply.port)
            intruder.send(header("127.0.0.1", echo.port) + b"from intruder", relay)
            client.send(header("127.0.0.1", echo.port) + b"from client", relay)
            _, _, payload = split_reply_datagram(await client.receive())
            assert payload == b"from client"
            # Loopback keeps order into one socket: the intruder's datagram was handled first.
            assert [data for data, _ in echo.received] == [b"from client"]
            assert intruder.queue.empty()
            writer.close()
        await eventually(lambda: bool(finished_lines(caplog)), what="the log line")
    assert "datagrams out=1 in=1 dropped=1" in finished_lines(caplog)[0]


async def test_with_a_zero_port_declared_the_first_sender_port_is_the_client(
    proxy: RunningProxy, echo: UdpEcho
) -> None:
    async with (
        udp_client() as first,
        udp_client() as second,
        association(proxy.port, ("0.0.0.0", 0)) as (_, _, reply),
    ):
        relay = (reply.host, reply.port)
        first.send(header("127.0.0.1", echo.port) + b"first", relay)
        assert split_reply_datagram(await first.receive())[2] == b"first"
        second.send(header("127.0.0.1", echo.port) + b"second", relay)
        first.send(header("127.0.0.1", echo.port) + b"first again", relay)
        assert split_reply_datagram(await first.receive())[2] == b"first again"
        assert [data for data, _ in echo.received] == [b"first", b"first again"]
        assert second.queue.empty()


async def test_fragments_and_malformed_headers_are_dropped(
    proxy: RunningProxy, echo: UdpEcho, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="socksauth")
    async with udp_client() as client:
        async with association(proxy.port, ("0.0.0.0", client.port)) as (_, writer, reply):
            relay = (reply.host, reply.port)
            client.send(header("127.0.0.1", echo.port, fragment=1) + b"fragment", relay)
            client.send(b"\x00\x01" + header("127.0.0.1", echo.port)[2:] + b"bad rsv", relay)
            client.send(b"\x00\x00\x00\x09garbage", relay)
            client.send(header("127.0.0.1", echo.port) + b"good", relay)
            assert split_reply_datagram(await client.receive())[2] == b"good"
            assert [data for data, _ in echo.received] == [b"good"]
            writer.close()
        await eventually(lambda: bool(finished_lines(caplog)), what="the log line")
    assert "datagrams out=1 in=1 dropped=3" in finished_lines(caplog)[0]


async def test_datagrams_from_addresses_the_client_never_sent_to_do_not_reach_it(
    proxy: RunningProxy, echo: UdpEcho
) -> None:
    async with (
        udp_client() as client,
        udp_client() as stranger,
        association(proxy.port, ("0.0.0.0", client.port)) as (_, _, reply),
    ):
        relay = (reply.host, reply.port)
        client.send(header("127.0.0.1", echo.port) + b"one", relay)
        assert split_reply_datagram(await client.receive())[2] == b"one"
        outbound = echo.received[0][1]  # the proxy's outbound socket, as the target saw it
        stranger.send(b"unsolicited", (outbound[0], outbound[1]))
        client.send(header("127.0.0.1", echo.port) + b"two", relay)
        host, port, payload = split_reply_datagram(await client.receive())
        assert (host, port, payload) == ("127.0.0.1", echo.port, b"two")


async def test_the_association_ends_when_its_tcp_connection_closes(
    proxy: RunningProxy, echo: UdpEcho
) -> None:
    async with udp_client() as client:
        async with association(proxy.port, ("0.0.0.0", client.port)) as (_, _, reply):
            client.send(header("127.0.0.1", echo.port) + b"alive", (reply.host, reply.port))
            assert split_reply_datagram(await client.receive())[2] == b"alive"
            assert proxy.server.active_clients == 1
        await eventually(lambda: proxy.server.active_clients == 0, what="the client to end")
    # The relay socket is closed: its port can be bound again.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", reply.port))


async def test_an_idle_association_is_closed_with_its_tcp_connection(
    start_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="socksauth")
    async with start_proxy(udp_idle_timeout_seconds=0.2) as proxy:
        async with association(proxy.port) as (reader, _, reply):
            assert reply.reply == 0x00
            assert await read_until_closed(reader) == b""
        await eventually(lambda: bool(finished_lines(caplog)), what="the log line")
    assert " idle_timeout " in finished_lines(caplog)[0]


async def test_udp_associate_switched_off_gets_reply_7(start_proxy: ProxyFactory) -> None:
    async with (
        start_proxy(udp_enabled=False) as proxy,
        association(proxy.port) as (reader, _, reply),
    ):
        assert reply.reply == 0x07
        assert await read_until_closed(reader) == b""


@contextlib.asynccontextmanager
async def proxy_on(database_url: str, host: str) -> AsyncIterator[ProxyServer]:
    await allow_loopback_targets(database_url)
    settings = Settings(database_url=database_url, listen=(ListenAddress(host=host, port=0),))
    async with app.running_server(settings) as server:
        yield server


@needs_ipv6
async def test_an_ipv6_client_gets_an_ipv6_relay_and_reaches_both_families(
    database_url: str, user_store: SqlUserStore, echo: UdpEcho
) -> None:
    async with (
        proxy_on(database_url, "::1") as server,
        udp_echo("::1") as echo6,
        udp_client("::1") as client,
        association(server.bound[0].port, ("::", client.port), "::1") as (_, _, reply),
    ):
        assert (reply.reply, reply.host) == (0x00, "::1")
        relay = (reply.host, reply.port)
        client.send(header("::1", echo6.port) + b"six", relay)
        assert split_reply_datagram(await client.receive()) == ("::1", echo6.port, b"six")
        client.send(header("127.0.0.1", echo.port) + b"four", relay)
        assert split_reply_datagram(await client.receive()) == ("127.0.0.1", echo.port, b"four")
