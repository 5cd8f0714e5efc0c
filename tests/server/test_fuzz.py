"""Fuzzing, bounded in time: the sans-IO core driven as the server drives it, the UDP header
parser, the destination policy, and the handshake over a real socket. Whatever arrives, only
protocol errors come out, and the server logs no unexpected error and keeps serving.

The proxy under fuzz denies every destination (one ``deny`` rule): a request that happens to
be valid is refused before any lookup or connection, so nothing leaves loopback.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time

import pytest
from e2e import (
    ALICE,
    ALICE_PASSWORD,
    EchoServer,
    ProxyFactory,
    credentials,
    login,
    read_reply,
    request,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.protocol import (
    NEED_DATA,
    PAUSED,
    Address,
    AuthReply,
    AuthStatus,
    Command,
    CommandReply,
    CommandRequest,
    ConnectionClosed,
    Credentials,
    Greeting,
    MethodSelection,
    ProtocolError,
    Reply,
    ServerConnection,
    parse_datagram,
    select_method,
)
from socksauth.rules import Action, Rule
from socksauth.server.policy import DestinationPolicy
from socksauth.store.interfaces import NewRule
from socksauth.store.rules import SqlRuleStore

# Budgets: the whole module stays within about 25 seconds.
CORE_SECONDS = 5.0
SOCKET_SECONDS = 8.0

GREETING = b"\x05\x01\x02"
CREDENTIALS = credentials(ALICE, ALICE_PASSWORD)

fragments = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"\x05", b"\x01", b"\x02", b"\x03", b"\x04", b"\x00", b"\xff"]),
    st.sampled_from(
        [
            GREETING,
            b"\x05\x02\x00\x02",
            CREDENTIALS,
            request("127.0.0.1", 80),
            request("example.com", 443),
            request("::1", 22),
            request("0.0.0.0", 0, 3),
            request("127.0.0.1", 0, 2),
        ]
    ),
)
# A stream: plausible pieces and noise, concatenated, then cut anywhere.
streams = st.lists(fragments, max_size=8).map(b"".join)


def drive(chunks: list[bytes]) -> None:
    """Feed ``chunks`` to a ServerConnection and answer each event as ClientConnection does;
    only ProtocolError may come out."""
    conn = ServerConnection()
    try:
        for chunk in [*chunks, b""]:
            conn.receive_data(chunk)
            while True:
                event = conn.next_event()
                if event is NEED_DATA or event is PAUSED or isinstance(event, ConnectionClosed):
                    break
                if isinstance(event, Greeting):
                    conn.send(MethodSelection(select_method(event.methods, allow_no_auth=False)))
                elif isinstance(event, Credentials):
                    status = AuthStatus.SUCCESS if event.password else AuthStatus.FAILURE
                    conn.send(AuthReply(status))
                elif isinstance(event, CommandRequest):
                    conn.send(CommandReply(Reply.CONNECTION_NOT_ALLOWED, Address.unspecified()))
                    return
            if chunk == b"" or conn.next_event() is PAUSED:
                return
    except ProtocolError:
        return


def test_the_core_driven_like_the_server_raises_only_protocol_errors() -> None:
    deadline = time.monotonic() + CORE_SECONDS

    @settings(max_examples=3000, deadline=None, database=None)
    @given(stream=streams, cuts=st.lists(st.integers(0, 200), max_size=6))
    def fuzz(stream: bytes, cuts: list[int]) -> None:
        if time.monotonic() > deadline:
            return
        points = sorted({min(cut, len(stream)) for cut in cuts})
        chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
        drive([chunk for chunk in chunks if chunk])

    fuzz()


def test_udp_headers_parse_or_raise_protocol_errors() -> None:
    deadline = time.monotonic() + 2.0

    @settings(max_examples=2000, deadline=None, database=None)
    @given(st.binary(max_size=300))
    def fuzz(data: bytes) -> None:
        if time.monotonic() > deadline:
            return
        try:
            header, payload = parse_datagram(data)
        except ProtocolError:
            return
        assert len(payload) <= len(data)
        assert header.address.port <= 0xFFFF

    fuzz()


def test_the_policy_decides_any_address_and_name_without_raising() -> None:
    deadline = time.monotonic() + 2.0
    policy = DestinationPolicy(
        [
            Rule(action=Action.DENY, domain="*.example.com"),
            Rule(action=Action.ALLOW, network=ipaddress.ip_network("127.0.0.0/30")),
            Rule(action=Action.DENY, port_min=0, port_max=1023, command=Command.UDP_ASSOCIATE),
        ],
        deny_private=True,
        own_endpoints=[("127.0.0.1", 1080), ("::1", 1080)],
    )

    @settings(max_examples=2000, deadline=None, database=None)
    @given(
        host=st.one_of(
            st.ip_addresses().map(str),
            st.text(min_size=1, max_size=60),
            st.from_regex(r"[a-z0-9*.-]{1,40}", fullmatch=True),
        ),
        port=st.integers(0, 65535),
        command=st.sampled_from(list(Command)),
        user=st.none() | st.text(max_size=10),
    )
    def fuzz(host: str, port: int, command: Command, user: str | None) -> None:
        if time.monotonic() > deadline:
            return
        verdict = policy.check_host(user, command, host, port)
        assert isinstance(verdict.allowed, bool)
        address = ipaddress.ip_address(host) if _is_ip(host) else None
        if address is not None and address.is_loopback and int(address) & 0xFF > 3:
            assert not verdict.allowed

    fuzz()


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


@pytest.mark.slow
async def test_random_handshakes_over_a_socket_do_not_break_the_server(
    start_proxy: ProxyFactory,
    echo_server: EchoServer,
    engine: AsyncEngine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="socksauth")
    await SqlRuleStore(engine).add_rule(NewRule(action="deny"))
    async with start_proxy(allow_loopback=False, handshake_timeout_seconds=0.5) as proxy:
        port = proxy.port
        deadline = time.monotonic() + SOCKET_SECONDS
        counts = {"examples": 0}

        @settings(
            max_examples=1500,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(
            prefix=st.sampled_from([b"", GREETING, GREETING + CREDENTIALS]),
            stream=streams,
            source=st.integers(2, 250),
            close=st.sampled_from(["half", "full", "wait"]),
        )
        def fuzz(prefix: bytes, stream: bytes, source: int, close: str) -> None:
            if time.monotonic() > deadline:
                return
            counts["examples"] += 1
            # Many source addresses, so the login throttle does not turn every example into
            # an early lockout.
            with socket.socket() as sock:
                sock.settimeout(5.0)
                sock.bind((f"127.0.0.{source}", 0))
                sock.connect(("127.0.0.1", port))
                try:
                    sock.sendall(prefix + stream)
                    if close == "half":
                        sock.shutdown(socket.SHUT_WR)
                    elif close == "full":
                        return
                    while sock.recv(4096):
                        pass
                except (ConnectionError, TimeoutError):
                    pass

        await asyncio.to_thread(fuzz)
        assert counts["examples"] > 50
        # Still serving: a good client gets its reply (0x02, everything is denied here).
        async with asyncio.timeout(10):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            await login(reader, writer)
            writer.write(request(echo_server.host, echo_server.port))
            assert (await read_reply(reader)).reply == 0x02
        finally:
            writer.close()
    unexpected = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert unexpected == [], [r.getMessage() for r in unexpected]


@pytest.mark.parametrize("name", [b"\x01\x00\x04\x00\x00", b"al\x00ice", b"\xff\xfe", b"alice\n"])
async def test_a_username_no_account_can_have_is_a_plain_login_failure(
    start_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture, name: bytes
) -> None:
    # Found by the socket fuzz on PostgreSQL: a NUL in the username made the lookup raise.
    caplog.set_level(logging.INFO, logger="socksauth")
    async with start_proxy() as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        try:
            password = b"whatever"
            writer.write(
                GREETING + bytes((1, len(name))) + name + bytes((len(password),)) + password
            )
            async with asyncio.timeout(10):
                assert await reader.read() == b"\x05\x02\x01\x01"
        finally:
            writer.close()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
