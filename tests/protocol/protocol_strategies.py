"""Hypothesis strategies and a scripted server for the protocol tests (not a test module)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from hypothesis import strategies as st

from socksauth.protocol import (
    NEED_DATA,
    PAUSED,
    Address,
    AddressType,
    AuthMethod,
    AuthReply,
    AuthStatus,
    Command,
    CommandReply,
    CommandRequest,
    ConnectionClosed,
    Credentials,
    Greeting,
    MethodSelection,
    Reply,
    ServerConnection,
    State,
    select_method,
)

ports = st.integers(min_value=0, max_value=0xFFFF)


def _fits_one_length_byte(text: str) -> bool:
    return 1 <= len(text.encode("utf-8", "surrogateescape")) <= 255


# 1-255 bytes: printable and non-ASCII text, and arbitrary bytes kept via surrogateescape
# (how the parsers decode what is not UTF-8).
short_strings = st.one_of(
    st.text(min_size=1, max_size=63),
    st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-", min_size=1, max_size=255),
    st.binary(min_size=1, max_size=255).map(lambda raw: raw.decode("utf-8", "surrogateescape")),
).filter(_fits_one_length_byte)

ipv4_addresses = st.builds(Address, st.just(AddressType.IPV4), st.ip_addresses(v=4).map(str), ports)
ipv6_addresses = st.builds(Address, st.just(AddressType.IPV6), st.ip_addresses(v=6).map(str), ports)
domain_addresses = st.builds(Address, st.just(AddressType.DOMAINNAME), short_strings, ports)
addresses = st.one_of(ipv4_addresses, ipv6_addresses, domain_addresses)

method_lists = st.lists(st.integers(0, 255), min_size=1, max_size=255).map(tuple)
greetings = st.builds(Greeting, method_lists)
credentials = st.builds(Credentials, short_strings, short_strings)
requests = st.builds(CommandRequest, st.sampled_from(Command), addresses)
method_selections = st.builds(MethodSelection, st.sampled_from(AuthMethod))
auth_replies = st.builds(AuthReply, st.sampled_from(AuthStatus))
replies = st.builds(CommandReply, st.sampled_from(Reply), addresses)
server_events = st.one_of(method_selections, auth_replies, replies)


def split_points(data: st.DataObject, length: int) -> list[int]:
    """Sorted cut positions inside a message of ``length`` bytes."""
    if length < 2:
        return []
    cuts = data.draw(st.sets(st.integers(1, length - 1), max_size=min(length - 1, 40)))
    return sorted(cuts)


def cut(wire: bytes, points: list[int]) -> list[bytes]:
    bounds = [0, *points, len(wire)]
    return [wire[a:b] for a, b in itertools.pairwise(bounds)]


BOUND = Address.from_host("198.51.100.7", 40000)
PEER = Address.from_host("203.0.113.9", 51000)
PASSWORD = "correct horse"


@dataclass
class Transcript:
    """What one handshake produced: events read, bytes written, final state, tunnel bytes."""

    events: list[object] = field(default_factory=list)
    sent: bytes = b""
    state: State = State.AWAIT_GREETING
    trailing: tuple[bytes, bool] | None = None


def serve(
    chunks: list[bytes], *, allow_no_auth: bool = False, max_handshake_bytes: int | None = None
) -> Transcript:
    """Drive a ServerConnection as house rule 1 says, answering like a permissive server.

    Each chunk is fed with receive_data() (b"" is end of stream), then next_event() is called
    until NEED_DATA; on PAUSED the server answers: select_method(), AuthReply by password,
    CommandReply SUCCEEDED (twice for BIND). Tunnel bytes are read once all chunks are in.
    """
    conn = (
        ServerConnection()
        if max_handshake_bytes is None
        else ServerConnection(max_handshake_bytes=max_handshake_bytes)
    )
    out = Transcript()
    for chunk in chunks:
        conn.receive_data(chunk)
        while conn.state not in (State.ESTABLISHED, State.CLOSED):
            event = conn.next_event()
            if event is NEED_DATA:
                break
            if event is PAUSED:
                out.sent += conn.send(_answer(conn, out.events, allow_no_auth))
                continue
            out.events.append(event)
            if isinstance(event, ConnectionClosed):
                break
    out.state = conn.state
    if conn.state is State.ESTABLISHED:
        out.trailing = conn.trailing_data
    return out


def _answer(
    conn: ServerConnection, events: list[object], allow_no_auth: bool
) -> MethodSelection | AuthReply | CommandReply:
    last = events[-1]
    if conn.state is State.SEND_METHOD:
        assert isinstance(last, Greeting)
        return MethodSelection(select_method(last.methods, allow_no_auth))
    if conn.state is State.SEND_AUTH_REPLY:
        assert isinstance(last, Credentials)
        ok = last.password == PASSWORD
        return AuthReply(AuthStatus.SUCCESS if ok else AuthStatus.FAILURE)
    if conn.state is State.SEND_REPLY:
        return CommandReply(Reply.SUCCEEDED, BOUND)
    assert conn.state is State.SEND_SECOND_REPLY
    return CommandReply(Reply.SUCCEEDED, PEER)
