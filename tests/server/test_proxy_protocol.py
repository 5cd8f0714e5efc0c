"""PROXY protocol v1/v2 on the listeners: from a configured load balancer the header's client
address stands for the peer (audit, trusted networks, client networks, per-address caps, UDP);
a header from anyone else, or no header from a load balancer, is a protocol error."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import struct
from collections.abc import AsyncIterator, Sequence

import pytest
from e2e import (
    ALICE,
    ALICE_PASSWORD,
    NO_AUTH,
    UDP_ASSOCIATE,
    USERNAME_PASSWORD,
    WAIT_SECONDS,
    EchoServer,
    ProxyFactory,
    allow_loopback_targets,
    credentials,
    encode_address,
    eventually,
    greeting,
    login,
    read_exactly,
    read_reply,
    read_until_closed,
    request,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth import app
from socksauth.config import ListenAddress, Settings
from socksauth.protocol.proxy_header import V2_SIGNATURE
from socksauth.store.audit import SqlAuditStore
from socksauth.store.interfaces import AuditEntry, AuditQuery
from socksauth.store.users import SqlUserStore

# The load balancer is 127.0.0.1; other loopback addresses play clients that bypass it.
LOAD_BALANCER = (ipaddress.ip_network("127.0.0.1/32"),)
CLIENT, CLIENT_PORT = "203.0.113.7", 40123


def v1_header(source: str, source_port: int, destination_port: int) -> bytes:
    family = "TCP6" if ":" in source else "TCP4"
    destination = "::1" if ":" in source else "127.0.0.1"
    return f"PROXY {family} {source} {destination} {source_port} {destination_port}\r\n".encode()


def v2_header(source: str, source_port: int, destination_port: int, tlvs: bytes = b"") -> bytes:
    address = ipaddress.ip_address(source)
    destination = ipaddress.ip_address("::1" if address.version == 6 else "127.0.0.1")
    family = 0x11 if address.version == 4 else 0x21
    body = address.packed + destination.packed + struct.pack("!HH", source_port, destination_port)
    body += tlvs
    return V2_SIGNATURE + bytes((0x21, family)) + struct.pack("!H", len(body)) + body


V2_LOCAL = V2_SIGNATURE + b"\x20\x00\x00\x00"


@contextlib.asynccontextmanager
async def connection_from(
    port: int, source: str = "127.0.0.1"
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    """A TCP connection to the proxy from the loopback address ``source``."""
    async with asyncio.timeout(WAIT_SECONDS):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"through the load balancer")
    assert await read_exactly(reader, 25) == b"through the load balancer"


async def audit_entries(engine: AsyncEngine) -> Sequence[AuditEntry]:
    """Every row, oldest first; call after the proxy stopped (that flushes the audit)."""
    return await SqlAuditStore(engine).find_entries(AuditQuery(limit=None))


async def closed_without_a_word(reader: asyncio.StreamReader) -> None:
    with contextlib.suppress(ConnectionResetError):
        assert await read_until_closed(reader) == b""


# --- the real client address stands for the peer ------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [v1_header(CLIENT, CLIENT_PORT, 1080), v2_header(CLIENT, CLIENT_PORT, 1080)],
    ids=["v1", "v2"],
)
async def test_header_and_greeting_in_one_write_tunnel_and_audit_the_real_client(
    start_proxy: ProxyFactory, echo_server: EchoServer, engine: AsyncEngine, header: bytes
) -> None:
    async with (
        start_proxy(proxy_protocol_networks=LOAD_BALANCER) as proxy,
        connection_from(proxy.port) as (reader, writer),
    ):
        writer.write(header + greeting(USERNAME_PASSWORD))
        assert await read_exactly(reader, 2) == b"\x05\x02"
        writer.write(credentials(ALICE, ALICE_PASSWORD))
        assert await read_exactly(reader, 2) == b"\x01\x00"
        writer.write(request(echo_server.host, echo_server.port))
        assert (await read_reply(reader)).reply == 0x00
        await round_trip(reader, writer)
    [entry] = await audit_entries(engine)
    assert (entry.client_host, entry.client_port) == (CLIENT, CLIENT_PORT)
    assert (entry.username, entry.command, entry.reply) == (ALICE, "connect", 0)


@pytest.mark.parametrize(
    "header",
    [
        v1_header("2001:db8::7", CLIENT_PORT, 1080),
        # With a NOOP TLV, which is skipped.
        v2_header("2001:db8::7", CLIENT_PORT, 1080, tlvs=b"\x04\x00\x02ab"),
    ],
    ids=["v1", "v2"],
)
async def test_a_header_sent_byte_by_byte_is_read_whole(
    start_proxy: ProxyFactory, echo_server: EchoServer, engine: AsyncEngine, header: bytes
) -> None:
    async with (
        start_proxy(proxy_protocol_networks=LOAD_BALANCER) as proxy,
        connection_from(proxy.port) as (reader, writer),
    ):
        for i in range(len(header)):
            writer.write(header[i : i + 1])
            await writer.drain()
        await login(reader, writer)
        writer.write(request(echo_server.host, echo_server.port))
        assert (await read_reply(reader)).reply == 0x00
        await round_trip(reader, writer)
    [entry] = await audit_entries(engine)
    assert (entry.client_host, entry.client_port) == ("2001:db8::7", CLIENT_PORT)


async def test_trusted_networks_apply_to_the_address_in_the_header(
    start_proxy: ProxyFactory, echo_server: EchoServer
) -> None:
    trusted = (ipaddress.ip_network("203.0.113.0/24"),)
    async with start_proxy(
        proxy_protocol_networks=LOAD_BALANCER, trusted_networks=trusted
    ) as proxy:
        # The load balancer's own address is not trusted; the client behind it is.
        async with connection_from(proxy.port) as (reader, writer):
            writer.write(v2_header(CLIENT, CLIENT_PORT, proxy.port) + greeting(NO_AUTH))
            assert await read_exactly(reader, 2) == b"\x05\x00"
            writer.write(request(echo_server.host, echo_server.port))
            assert (await read_reply(reader)).reply == 0x00
            await round_trip(reader, writer)
        async with connection_from(proxy.port) as (reader, writer):
            writer.write(v2_header("198.51.100.9", CLIENT_PORT, proxy.port) + greeting(NO_AUTH))
            assert await read_exactly(reader, 2) == b"\x05\xff"


async def test_listener_client_networks_are_checked_on_the_address_in_the_header(
    database_url: str, user_store: SqlUserStore, echo_server: EchoServer
) -> None:
    await allow_loopback_targets(database_url)
    settings = Settings(
        database_url=database_url,
        listen=(
            ListenAddress(
                host="127.0.0.1", port=0, clients=(ipaddress.ip_network("203.0.113.0/24"),)
            ),
        ),
        proxy_protocol_networks=LOAD_BALANCER,
    )
    async with app.running_server(settings) as server:
        port = server.bound[0].port
        async with connection_from(port) as (reader, writer):
            writer.write(v1_header(CLIENT, CLIENT_PORT, port))
            await login(reader, writer)
            writer.write(request(echo_server.host, echo_server.port))
            assert (await read_reply(reader)).reply == 0x00
        async with connection_from(port) as (reader, writer):
            writer.write(v1_header("198.51.100.9", CLIENT_PORT, port) + greeting(NO_AUTH))
            await closed_without_a_word(reader)


async def test_unauthenticated_clients_are_counted_per_real_address_not_per_load_balancer(
    start_proxy: ProxyFactory,
) -> None:
    async with (
        start_proxy(proxy_protocol_networks=LOAD_BALANCER, max_unauthenticated_per_address=1)
        as proxy,
        connection_from(proxy.port) as (first_reader, first),
    ):  # fmt: skip
        # One client sits in the handshake (greeting answered, no credentials yet).
        first.write(v1_header(CLIENT, 1, proxy.port) + greeting(USERNAME_PASSWORD))
        assert await read_exactly(first_reader, 2) == b"\x05\x02"
        # Another client behind the same load balancer is not held back by it ...
        async with connection_from(proxy.port) as (reader, writer):
            writer.write(v1_header("203.0.113.8", 2, proxy.port) + greeting(USERNAME_PASSWORD))
            assert await read_exactly(reader, 2) == b"\x05\x02"
        # ... but a second handshake from the first client's address waits its turn:
        async with connection_from(proxy.port) as (reader, writer):
            writer.write(v1_header(CLIENT, 3, proxy.port) + greeting(USERNAME_PASSWORD))
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await reader.read(1)
            # ... and starts when the first client's handshake ends.
            first.close()
            assert await read_exactly(reader, 2) == b"\x05\x02"


async def test_udp_datagrams_are_accepted_from_the_address_in_the_header(
    start_proxy: ProxyFactory,
) -> None:
    # The header names 127.0.0.77, a loopback address this test can send from: datagrams
    # must come from the client, not from the load balancer that carried its TCP connection.
    loop = asyncio.get_running_loop()
    received: asyncio.Queue[bytes] = asyncio.Queue()

    class Target(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: tuple[str | int, ...]) -> None:
            received.put_nowait(data)

    target, _ = await loop.create_datagram_endpoint(Target, local_addr=("127.0.0.1", 0))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    balancer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        client.bind(("127.0.0.77", 0))
        balancer.bind(("127.0.0.1", 0))
        target_port = target.get_extra_info("sockname")[1]
        datagram = bytes((0, 0, 0)) + encode_address("127.0.0.1", target_port)
        async with (
            start_proxy(proxy_protocol_networks=LOAD_BALANCER) as proxy,
            connection_from(proxy.port) as (reader, writer),
        ):
            writer.write(v2_header("127.0.0.77", 5000, proxy.port))
            await login(reader, writer)
            writer.write(request("0.0.0.0", 0, UDP_ASSOCIATE))
            reply = await read_reply(reader)
            assert reply.reply == 0x00
            balancer.sendto(datagram + b"from the balancer", (reply.host, reply.port))
            client.sendto(datagram + b"from the client", (reply.host, reply.port))
            async with asyncio.timeout(WAIT_SECONDS):
                assert await received.get() == b"from the client"
            # Loopback keeps order: the balancer's datagram was handled, and dropped, first.
            assert received.empty()
    finally:
        client.close()
        balancer.close()
        target.close()


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [v1_header(CLIENT, CLIENT_PORT, 1080), v2_header(CLIENT, CLIENT_PORT, 1080)],
    ids=["v1", "v2"],
)
async def test_a_header_from_an_address_that_is_no_load_balancer_is_refused(
    start_proxy: ProxyFactory,
    engine: AsyncEngine,
    header: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="socksauth")
    async with (
        start_proxy(proxy_protocol_networks=LOAD_BALANCER) as proxy,
        connection_from(proxy.port, "127.0.0.2") as (reader, writer),
    ):
        writer.write(header + greeting(USERNAME_PASSWORD))
        await closed_without_a_word(reader)
    [entry] = await audit_entries(engine)
    assert (entry.client_host, entry.outcome) == ("127.0.0.2", "protocol_error")
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in warnings] == [
        f"127.0.0.2:{entry.client_port}: a PROXY protocol header from an address not in "
        "proxy_protocol_networks"
    ]


async def test_a_header_is_refused_when_no_load_balancer_is_configured(
    start_proxy: ProxyFactory, engine: AsyncEngine
) -> None:
    async with start_proxy() as proxy, connection_from(proxy.port) as (reader, writer):
        writer.write(v1_header(CLIENT, CLIENT_PORT, proxy.port) + greeting(NO_AUTH))
        await closed_without_a_word(reader)
    [entry] = await audit_entries(engine)
    assert (entry.client_host, entry.outcome) == ("127.0.0.1", "protocol_error")


@pytest.mark.parametrize(
    "first_bytes",
    [
        greeting(USERNAME_PASSWORD),  # a client that bypassed the load balancer's header
        b"PROXY TCP4 203.0.113.7 127.0.0.1 40123\r\n\x05\x01\x02",  # a port missing
        b"PROXY TCP4 203.0.113.7 127.0.0.1 40123 1080\n\x05\x01\x02",  # LF without CR
        V2_SIGNATURE + b"\x31\x11\x00\x00",  # version 3
        b"PROXY " + b"x" * 200,
    ],
    ids=["no-header", "missing-field", "bare-lf", "v2-version-3", "no-crlf"],
)
async def test_a_load_balancer_without_a_valid_header_is_refused(
    start_proxy: ProxyFactory,
    engine: AsyncEngine,
    first_bytes: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="socksauth")
    async with (
        start_proxy(proxy_protocol_networks=LOAD_BALANCER) as proxy,
        connection_from(proxy.port) as (reader, writer),
    ):
        writer.write(first_bytes)
        await closed_without_a_word(reader)
    [entry] = await audit_entries(engine)
    assert (entry.client_host, entry.outcome, entry.username) == (
        "127.0.0.1",
        "protocol_error",
        None,
    )
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


async def test_health_checks_leave_no_audit_row_and_no_info_line(
    start_proxy: ProxyFactory, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="socksauth")
    async with start_proxy(proxy_protocol_networks=LOAD_BALANCER) as proxy:
        # A TCP check (connect, close) and a PROXY v2 LOCAL check (HAProxy check-send-proxy).
        async with connection_from(proxy.port) as (reader, writer):
            writer.write_eof()
            await closed_without_a_word(reader)
        async with connection_from(proxy.port) as (reader, writer):
            writer.write(V2_LOCAL)
            writer.write_eof()
            await closed_without_a_word(reader)
        await eventually(
            lambda: len([r for r in caplog.records if "health check" in r.getMessage()]) == 2,
            what="two health checks logged",
        )
    assert await audit_entries(engine) == []
    client_lines = [r for r in caplog.records if r.name == "socksauth.client"]
    assert all(r.levelno == logging.DEBUG for r in client_lines), client_lines


@pytest.mark.parametrize(
    "header",
    [V2_LOCAL, b"PROXY UNKNOWN\r\n", V2_SIGNATURE + b"\x21\x00\x00\x00"],
    ids=["v2-local", "v1-unknown", "v2-unspec"],
)
async def test_after_a_header_without_addresses_the_load_balancer_is_the_client(
    start_proxy: ProxyFactory, echo_server: EchoServer, engine: AsyncEngine, header: bytes
) -> None:
    async with (
        start_proxy(proxy_protocol_networks=LOAD_BALANCER) as proxy,
        connection_from(proxy.port) as (reader, writer),
    ):
        writer.write(header)
        await login(reader, writer)
        writer.write(request(echo_server.host, echo_server.port))
        assert (await read_reply(reader)).reply == 0x00
        await round_trip(reader, writer)
    [entry] = await audit_entries(engine)
    assert entry.client_host == "127.0.0.1"
