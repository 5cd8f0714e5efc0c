"""ServerConnection: the handshake state machine, driven only through its public methods."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_strategies import (
    BOUND,
    PASSWORD,
    PEER,
    Transcript,
    addresses,
    cut,
    method_lists,
    serve,
    split_points,
)

from socksauth.protocol import (
    NEED_DATA,
    PAUSED,
    Address,
    AuthMethod,
    AuthReply,
    AuthStatus,
    Command,
    CommandReply,
    CommandRequest,
    ConnectionClosed,
    Credentials,
    Greeting,
    LocalProtocolError,
    MethodSelection,
    ProtocolError,
    RemoteProtocolError,
    Reply,
    ServerConnection,
    State,
    select_method,
)
from socksauth.protocol.buffer import ReceiveBuffer
from socksauth.protocol.events import parse_reply

BOUNDED = settings(max_examples=200, deadline=None)

GREETING = Greeting((AuthMethod.NO_AUTHENTICATION_REQUIRED, AuthMethod.USERNAME_PASSWORD))
CREDENTIALS = Credentials("alice", PASSWORD)
TARGET = Address.from_host("192.0.2.1", 80)
CONNECT = CommandRequest(Command.CONNECT, TARGET)
APP = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
FAILURE_REPLY = b"\x05\x01\x00\x01\x00\x00\x00\x00\x00\x00"


# --- valid exchanges: whole, byte by byte, random splits ----------------------------------


@dataclass(frozen=True)
class Exchange:
    """What a client sends in one connection, and what the scripted server must make of it."""

    wire: bytes
    end_of_stream: bool
    allow_no_auth: bool
    expected: Transcript


def _exchange(
    messages: list[object],
    *,
    app: bytes = b"",
    end_of_stream: bool = False,
    allow_no_auth: bool = False,
    events: list[object],
    sent: bytes,
    state: State,
    trailing: tuple[bytes, bool] | None,
) -> Exchange:
    wire = b"".join(m.encode() for m in messages) + app  # type: ignore[attr-defined]
    return Exchange(wire, end_of_stream, allow_no_auth, Transcript(events, sent, state, trailing))


def _reply(reply: Reply, address: Address) -> bytes:
    return CommandReply(reply, address).encode()


BIND = CommandRequest(Command.BIND, Address.from_host("example.com", 21))
UDP = CommandRequest(Command.UDP_ASSOCIATE, Address.from_host("::", 0))
DOMAIN_CONNECT = CommandRequest(Command.CONNECT, Address.from_host("bücher.example", 443))

EXCHANGES = {
    "connect-ipv4-with-auth-and-pipelined-application-bytes": _exchange(
        [GREETING, CREDENTIALS, CONNECT],
        app=APP,
        events=[GREETING, CREDENTIALS, CONNECT],
        sent=b"\x05\x02\x01\x00" + _reply(Reply.SUCCEEDED, BOUND),
        state=State.ESTABLISHED,
        trailing=(APP, False),
    ),
    "connect-domain-without-auth-for-a-trusted-client": _exchange(
        [Greeting((AuthMethod.NO_AUTHENTICATION_REQUIRED,)), DOMAIN_CONNECT],
        app=b"\x16\x03\x01",
        allow_no_auth=True,
        events=[Greeting((AuthMethod.NO_AUTHENTICATION_REQUIRED,)), DOMAIN_CONNECT],
        sent=b"\x05\x00" + _reply(Reply.SUCCEEDED, BOUND),
        state=State.ESTABLISHED,
        trailing=(b"\x16\x03\x01", False),
    ),
    "udp-associate-ipv6-without-trailing-bytes": _exchange(
        [GREETING, CREDENTIALS, UDP],
        events=[GREETING, CREDENTIALS, UDP],
        sent=b"\x05\x02\x01\x00" + _reply(Reply.SUCCEEDED, BOUND),
        state=State.ESTABLISHED,
        trailing=(b"", False),
    ),
    "bind-gets-two-replies-then-the-tunnel": _exchange(
        [GREETING, CREDENTIALS, BIND],
        app=b"PORT data",
        events=[GREETING, CREDENTIALS, BIND],
        sent=b"\x05\x02\x01\x00" + _reply(Reply.SUCCEEDED, BOUND) + _reply(Reply.SUCCEEDED, PEER),
        state=State.ESTABLISHED,
        trailing=(b"PORT data", False),
    ),
    "connect-then-client-closes-its-side": _exchange(
        [GREETING, CREDENTIALS, CONNECT],
        app=APP,
        end_of_stream=True,
        events=[GREETING, CREDENTIALS, CONNECT],
        sent=b"\x05\x02\x01\x00" + _reply(Reply.SUCCEEDED, BOUND),
        state=State.ESTABLISHED,
        trailing=(APP, True),
    ),
    "wrong-password-is-refused-and-closed": _exchange(
        [GREETING, Credentials("alice", "wrong"), CONNECT],
        events=[GREETING, Credentials("alice", "wrong")],
        sent=b"\x05\x02\x01\x01",
        state=State.CLOSED,
        trailing=None,
    ),
    "gssapi-only-client-gets-no-acceptable-methods": _exchange(
        [Greeting((AuthMethod.GSSAPI,))],
        events=[Greeting((AuthMethod.GSSAPI,))],
        sent=b"\x05\xff",
        state=State.CLOSED,
        trailing=None,
    ),
    "no-auth-client-refused-when-not-trusted": _exchange(
        [Greeting((AuthMethod.NO_AUTHENTICATION_REQUIRED,)), CONNECT],
        events=[Greeting((AuthMethod.NO_AUTHENTICATION_REQUIRED,))],
        sent=b"\x05\xff",
        state=State.CLOSED,
        trailing=None,
    ),
    "client-closes-after-greeting": _exchange(
        [GREETING],
        end_of_stream=True,
        events=[GREETING, ConnectionClosed()],
        sent=b"\x05\x02",
        state=State.CLOSED,
        trailing=None,
    ),
    "client-closes-after-credentials": _exchange(
        [GREETING, CREDENTIALS],
        end_of_stream=True,
        events=[GREETING, CREDENTIALS, ConnectionClosed()],
        sent=b"\x05\x02\x01\x00",
        state=State.CLOSED,
        trailing=None,
    ),
    "client-closes-before-sending-anything": _exchange(
        [],
        end_of_stream=True,
        events=[ConnectionClosed()],
        sent=b"",
        state=State.CLOSED,
        trailing=None,
    ),
}


def _run(exchange: Exchange, chunks: list[bytes]) -> Transcript:
    eof = [b""] if exchange.end_of_stream else []
    return serve([c for c in chunks if c] + eof, allow_no_auth=exchange.allow_no_auth)


@pytest.mark.parametrize("exchange", EXCHANGES.values(), ids=EXCHANGES.keys())
def test_exchange_fed_whole_gives_the_expected_events_replies_and_trailing_data(
    exchange: Exchange,
) -> None:
    assert _run(exchange, [exchange.wire]) == exchange.expected


@pytest.mark.parametrize("exchange", EXCHANGES.values(), ids=EXCHANGES.keys())
def test_exchange_fed_byte_by_byte_gives_the_same_result_as_whole(exchange: Exchange) -> None:
    chunks = [exchange.wire[i : i + 1] for i in range(len(exchange.wire))]
    assert _run(exchange, chunks) == exchange.expected


@pytest.mark.parametrize("exchange", EXCHANGES.values(), ids=EXCHANGES.keys())
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_exchange_fed_in_random_splits_gives_the_same_result_as_whole(
    exchange: Exchange, data: st.DataObject
) -> None:
    chunks = cut(exchange.wire, split_points(data, len(exchange.wire)))
    assert _run(exchange, chunks) == exchange.expected


@BOUNDED
@given(
    st.sampled_from(Command),
    addresses,
    st.binary(max_size=100),
    st.data(),
)
def test_any_pipelined_handshake_in_any_split_keeps_every_application_byte(
    command: Command, target: Address, app: bytes, data: st.DataObject
) -> None:
    request = CommandRequest(command, target)
    wire = GREETING.encode() + CREDENTIALS.encode() + request.encode() + app
    result = serve(cut(wire, split_points(data, len(wire))))
    assert result.events == [GREETING, CREDENTIALS, request]
    assert result.trailing == (app, False)


@BOUNDED
@given(st.binary(min_size=1, max_size=100), st.data())
def test_trailing_data_at_establishment_plus_later_bytes_is_the_whole_stream(
    app: bytes, data: st.DataObject
) -> None:
    # What the relay sees: trailing_data once the reply is sent, then later reads directly.
    wire = GREETING.encode() + CREDENTIALS.encode() + CONNECT.encode() + app
    conn = ServerConnection()
    tunnel = b""
    for chunk in cut(wire, split_points(data, len(wire))):
        if conn.state is State.ESTABLISHED:
            tunnel += chunk
            continue
        conn.receive_data(chunk)
        while (event := conn.next_event()) is not NEED_DATA:
            if event is PAUSED:
                conn.send(_permissive_answer(conn))
                if _established(conn):
                    tunnel += conn.trailing_data[0]
                    break
    assert _established(conn)
    assert tunnel == app


def _established(conn: ServerConnection) -> bool:
    return conn.state is State.ESTABLISHED


def _permissive_answer(conn: ServerConnection) -> MethodSelection | AuthReply | CommandReply:
    if conn.state is State.SEND_METHOD:
        return MethodSelection(AuthMethod.USERNAME_PASSWORD)
    if conn.state is State.SEND_AUTH_REPLY:
        return AuthReply(AuthStatus.SUCCESS)
    return CommandReply(Reply.SUCCEEDED, BOUND)


def test_the_longest_possible_pipelined_handshake_fits_the_default_limit() -> None:
    greeting = Greeting(tuple(range(255)))
    creds = Credentials("u" * 255, "p" * 255)
    request = CommandRequest(Command.CONNECT, Address.from_host("d" * 255, 443))
    conn = ServerConnection()
    conn.receive_data(greeting.encode() + creds.encode() + request.encode())
    events = []
    while conn.state is not State.ESTABLISHED and (event := conn.next_event()) is not NEED_DATA:
        if event is PAUSED:
            conn.send(_permissive_answer(conn))
        else:
            events.append(event)
    assert events == [greeting, creds, request]


# --- driving the connection to a given state ----------------------------------------------


def _receive(conn: ServerConnection, wire: bytes) -> object:
    """Feed one complete client message and read its event (NEED_DATA is a failure here)."""
    conn.receive_data(wire)
    event = conn.next_event()
    assert event is not NEED_DATA
    return event


def _reach(
    target: State,
    *,
    command: Command = Command.CONNECT,
    offered: tuple[int, ...] = (0x00, 0x02),
) -> ServerConnection:
    """A connection brought to ``target`` by a legal exchange (ERROR: by a bad greeting)."""
    conn = ServerConnection()
    if target is State.ERROR:
        conn.receive_data(b"\x04\x01")
        with pytest.raises(RemoteProtocolError):
            conn.next_event()
        return conn
    steps: list[Callable[[], object]] = [
        lambda: _receive(conn, Greeting(offered).encode()),
        lambda: conn.send(MethodSelection(AuthMethod.USERNAME_PASSWORD)),
        lambda: _receive(conn, CREDENTIALS.encode()),
        lambda: conn.send(AuthReply(AuthStatus.SUCCESS)),
        lambda: _receive(conn, CommandRequest(command, TARGET).encode()),
        lambda: conn.send(CommandReply(Reply.SUCCEEDED, BOUND)),
        lambda: conn.send(CommandReply(Reply.SUCCEEDED, PEER)),
    ]
    if target is State.CLOSED:
        steps[1] = lambda: conn.send(MethodSelection(AuthMethod.NO_ACCEPTABLE_METHODS))
    for step in steps:
        if conn.state is target:
            break
        step()
    assert conn.state is target
    return conn


ALL_REACHABLE = [
    (State.AWAIT_GREETING, Command.CONNECT),
    (State.SEND_METHOD, Command.CONNECT),
    (State.AWAIT_CREDENTIALS, Command.CONNECT),
    (State.SEND_AUTH_REPLY, Command.CONNECT),
    (State.AWAIT_REQUEST, Command.CONNECT),
    (State.SEND_REPLY, Command.CONNECT),
    (State.SEND_REPLY, Command.BIND),
    (State.SEND_REPLY, Command.UDP_ASSOCIATE),
    (State.SEND_SECOND_REPLY, Command.BIND),
    (State.ESTABLISHED, Command.CONNECT),
    (State.ESTABLISHED, Command.BIND),
    (State.CLOSED, Command.CONNECT),
    (State.ERROR, Command.CONNECT),
]
REACHABLE_IDS = [f"{s.name}-{c.name}" for s, c in ALL_REACHABLE]
RECEIVING = [State.AWAIT_GREETING, State.AWAIT_CREDENTIALS, State.AWAIT_REQUEST]
SENDING = [State.SEND_METHOD, State.SEND_AUTH_REPLY, State.SEND_REPLY, State.SEND_SECOND_REPLY]


# --- malformed input: the reply to send before closing ------------------------------------


@pytest.mark.parametrize(
    ("state", "wire", "reply_hint"),
    [
        (State.AWAIT_GREETING, b"\x04\x01\x00\x50\xc0\x00\x02\x01alice\x00", None),
        (State.AWAIT_GREETING, b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n", None),
        (State.AWAIT_GREETING, b"\x16\x03\x01\x02\x00", None),
        (State.AWAIT_GREETING, b"\x05\x00", b"\x05\xff"),
        (State.AWAIT_CREDENTIALS, b"\x05\x05alice\x06secret", b"\x01\x01"),
        (State.AWAIT_CREDENTIALS, b"\x00\x05alice\x06secret", b"\x01\x01"),
        (State.AWAIT_REQUEST, b"\x04\x01\x00\x01\xc0\x00\x02\x01\x00\x50", FAILURE_REPLY),
        (
            State.AWAIT_REQUEST,
            b"\x05\x01\x00\x02\xc0\x00\x02\x01\x00\x50",
            b"\x05\x08\x00\x01\x00\x00\x00\x00\x00\x00",
        ),
        (
            State.AWAIT_REQUEST,
            b"\x05\x09\x00\x01\xc0\x00\x02\x01\x00\x50",
            b"\x05\x07\x00\x01\x00\x00\x00\x00\x00\x00",
        ),
        (
            State.AWAIT_REQUEST,
            b"\x05\x00\x00\x01\xc0\x00\x02\x01\x00\x50",
            b"\x05\x07\x00\x01\x00\x00\x00\x00\x00\x00",
        ),
    ],
    ids=[
        "socks4-greeting-closes-silently",
        "http-request-closes-silently",
        "tls-client-hello-closes-silently",
        "zero-methods-gets-no-acceptable-methods",
        "rfc1929-version-5-gets-auth-failure",
        "rfc1929-version-0-gets-auth-failure",
        "request-version-4-gets-general-failure",
        "unknown-atyp-2-gets-address-type-not-supported",
        "unknown-cmd-9-gets-command-not-supported",
        "cmd-0-gets-command-not-supported",
    ],
)
def test_malformed_message_raises_remote_error_with_the_reply_to_send(
    state: State, wire: bytes, reply_hint: bytes | None
) -> None:
    conn = _reach(state)
    conn.receive_data(wire)
    with pytest.raises(RemoteProtocolError) as caught:
        conn.next_event()
    assert caught.value.reply_hint == reply_hint
    assert conn.state is State.ERROR


def test_zero_length_domain_in_a_request_is_refused_with_a_failure_reply() -> None:
    conn = _reach(State.AWAIT_REQUEST)
    conn.receive_data(b"\x05\x01\x00\x03\x00\x00\x50")
    with pytest.raises(RemoteProtocolError, match="empty domain") as caught:
        conn.next_event()
    assert caught.value.reply_hint is not None
    assert _parsed_reply(caught.value.reply_hint).reply is not Reply.SUCCEEDED
    assert conn.state is State.ERROR


def _parsed_reply(wire: bytes) -> CommandReply:
    buffer = ReceiveBuffer(1024)
    buffer.feed(wire)
    reply = parse_reply(buffer)
    assert reply is not None
    assert len(buffer) == 0
    return reply


@pytest.mark.parametrize(
    ("state", "partial"),
    [
        (State.AWAIT_GREETING, b"\x05"),
        (State.AWAIT_GREETING, b"\x05\x02\x00"),
        (State.AWAIT_CREDENTIALS, b"\x01\x05ali"),
        (State.AWAIT_CREDENTIALS, b"\x01\x05alice\x06"),
        (State.AWAIT_REQUEST, b"\x05\x01\x00"),
        (State.AWAIT_REQUEST, b"\x05\x01\x00\x03\x0bexample.com\x00"),
    ],
)
def test_end_of_stream_mid_message_is_a_remote_error_naming_the_state(
    state: State, partial: bytes
) -> None:
    conn = _reach(state)
    conn.receive_data(partial)
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match=f"closed mid-message in {state.value}"):
        conn.next_event()
    assert conn.state is State.ERROR


@pytest.mark.parametrize("state", RECEIVING, ids=[s.name for s in RECEIVING])
def test_end_of_stream_at_a_message_boundary_is_a_connection_closed_event(state: State) -> None:
    conn = _reach(state)
    assert conn.next_event() is NEED_DATA
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()
    assert conn.state is State.CLOSED


def test_more_than_max_handshake_bytes_is_a_remote_error() -> None:
    conn = ServerConnection(max_handshake_bytes=1024)
    conn.receive_data(b"\x05\x01")
    with pytest.raises(RemoteProtocolError, match="1024"):
        conn.receive_data(b"\x00" * 1023)
    assert conn.state is State.ERROR


def test_exactly_max_handshake_bytes_is_accepted() -> None:
    conn = ServerConnection(max_handshake_bytes=1024)
    conn.receive_data(GREETING.encode() + b"\x00" * (1024 - 4))
    assert conn.next_event() == GREETING


def test_the_default_limit_stops_a_peer_that_never_finishes_its_greeting() -> None:
    conn = ServerConnection()
    conn.receive_data(b"\x05\xff")
    with pytest.raises(RemoteProtocolError):
        for _ in range(100):
            conn.receive_data(b"\x00" * 1024)
    assert conn.state is State.ERROR


# --- random bytes never raise anything but ProtocolError ------------------------------------


def _hint_is_a_failure_message(state: State, hint: bytes | None) -> bool:
    if hint is None:
        return True
    if state is State.AWAIT_GREETING:
        return hint == b"\x05\xff"
    if state is State.AWAIT_CREDENTIALS:
        return hint == b"\x01\x01"
    return _parsed_reply(hint).reply is not Reply.SUCCEEDED


@pytest.mark.parametrize("state", RECEIVING, ids=[s.name for s in RECEIVING])
@settings(max_examples=200, deadline=None)
@given(
    garbage=st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=40).map(lambda b: b"\x05" + b),
        st.binary(max_size=40).map(lambda b: b"\x01" + b),
        st.binary(max_size=40).map(lambda b: b"\x05\x01\x00" + b),
    ),
    end_of_stream=st.booleans(),
    data=st.data(),
)
def test_random_bytes_in_any_receiving_state_raise_only_remote_protocol_errors(
    state: State, garbage: bytes, end_of_stream: bool, data: st.DataObject
) -> None:
    conn = _reach(state)
    chunks = cut(garbage, split_points(data, len(garbage)))
    if end_of_stream:
        chunks.append(b"")
    try:
        for chunk in chunks:
            conn.receive_data(chunk)
            event = conn.next_event()
            while event not in (NEED_DATA, PAUSED) and not isinstance(event, ConnectionClosed):
                event = conn.next_event()
            if event is not NEED_DATA:
                break
        else:
            # After end of stream there is nothing left to wait for.
            assert not end_of_stream
    except RemoteProtocolError as error:
        assert conn.state is State.ERROR
        assert _hint_is_a_failure_message(state, error.reply_hint)
    except ProtocolError as error:
        pytest.fail(f"peer bytes raised {error!r}, not a RemoteProtocolError")


# --- method selection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "allow_no_auth", "selected"),
    [
        ((0x02,), False, AuthMethod.USERNAME_PASSWORD),
        ((0x00, 0x02), True, AuthMethod.USERNAME_PASSWORD),
        ((0x02, 0x00), True, AuthMethod.USERNAME_PASSWORD),
        ((0x01, 0x00, 0x80, 0x02), True, AuthMethod.USERNAME_PASSWORD),
        ((0x00,), True, AuthMethod.NO_AUTHENTICATION_REQUIRED),
        ((0x01, 0x00), True, AuthMethod.NO_AUTHENTICATION_REQUIRED),
        ((0x00,), False, AuthMethod.NO_ACCEPTABLE_METHODS),
        ((0x01,), True, AuthMethod.NO_ACCEPTABLE_METHODS),
        ((0x01,), False, AuthMethod.NO_ACCEPTABLE_METHODS),
        ((0x03, 0x80, 0xFE, 0xFF), True, AuthMethod.NO_ACCEPTABLE_METHODS),
        ((), True, AuthMethod.NO_ACCEPTABLE_METHODS),
        ((), False, AuthMethod.NO_ACCEPTABLE_METHODS),
    ],
    ids=[
        "username-password-only",
        "prefers-username-password-over-no-auth-listed-first",
        "prefers-username-password-listed-first",
        "username-password-among-others",
        "no-auth-when-allowed",
        "no-auth-after-gssapi-when-allowed",
        "no-auth-refused-when-not-allowed",
        "gssapi-only-allowed-no-auth",
        "gssapi-only",
        "private-and-unassigned-methods",
        "empty-allowed",
        "empty",
    ],
)
def test_select_method(offered: tuple[int, ...], allow_no_auth: bool, selected: AuthMethod) -> None:
    assert select_method(offered, allow_no_auth) is selected


@BOUNDED
@given(method_lists, st.booleans())
def test_select_method_picks_an_offered_method_or_none_acceptable(
    offered: tuple[int, ...], allow_no_auth: bool
) -> None:
    selected = select_method(offered, allow_no_auth)
    assert selected in offered or selected is AuthMethod.NO_ACCEPTABLE_METHODS
    assert selected is not AuthMethod.GSSAPI
    if not allow_no_auth:
        assert selected is not AuthMethod.NO_AUTHENTICATION_REQUIRED


# --- transitions on what the server sends ---------------------------------------------------


@pytest.mark.parametrize(
    ("start", "command", "event", "end"),
    [
        (
            State.SEND_METHOD,
            Command.CONNECT,
            MethodSelection(AuthMethod.USERNAME_PASSWORD),
            State.AWAIT_CREDENTIALS,
        ),
        (
            State.SEND_METHOD,
            Command.CONNECT,
            MethodSelection(AuthMethod.NO_AUTHENTICATION_REQUIRED),
            State.AWAIT_REQUEST,
        ),
        (
            State.SEND_METHOD,
            Command.CONNECT,
            MethodSelection(AuthMethod.NO_ACCEPTABLE_METHODS),
            State.CLOSED,
        ),
        (
            State.SEND_AUTH_REPLY,
            Command.CONNECT,
            AuthReply(AuthStatus.SUCCESS),
            State.AWAIT_REQUEST,
        ),
        (State.SEND_AUTH_REPLY, Command.CONNECT, AuthReply(AuthStatus.FAILURE), State.CLOSED),
        (
            State.SEND_REPLY,
            Command.CONNECT,
            CommandReply(Reply.SUCCEEDED, BOUND),
            State.ESTABLISHED,
        ),
        (
            State.SEND_REPLY,
            Command.UDP_ASSOCIATE,
            CommandReply(Reply.SUCCEEDED, BOUND),
            State.ESTABLISHED,
        ),
        (
            State.SEND_REPLY,
            Command.CONNECT,
            CommandReply(Reply.CONNECTION_REFUSED, Address.unspecified()),
            State.CLOSED,
        ),
        (
            State.SEND_REPLY,
            Command.BIND,
            CommandReply(Reply.SUCCEEDED, BOUND),
            State.SEND_SECOND_REPLY,
        ),
        (
            State.SEND_REPLY,
            Command.BIND,
            CommandReply(Reply.CONNECTION_NOT_ALLOWED, Address.unspecified()),
            State.CLOSED,
        ),
        (
            State.SEND_SECOND_REPLY,
            Command.BIND,
            CommandReply(Reply.SUCCEEDED, PEER),
            State.ESTABLISHED,
        ),
        (
            State.SEND_SECOND_REPLY,
            Command.BIND,
            CommandReply(Reply.TTL_EXPIRED, Address.unspecified()),
            State.CLOSED,
        ),
    ],
    ids=[
        "username-password-selected-awaits-credentials",
        "no-auth-selected-awaits-request",
        "no-acceptable-methods-closes",
        "auth-success-awaits-request",
        "auth-failure-closes",
        "connect-success-establishes",
        "udp-associate-success-establishes",
        "connect-failure-closes",
        "bind-first-success-awaits-second-reply",
        "bind-first-failure-closes",
        "bind-second-success-establishes",
        "bind-second-failure-closes",
    ],
)
def test_send_moves_to_the_next_state_and_returns_the_wire_bytes(
    start: State,
    command: Command,
    event: MethodSelection | AuthReply | CommandReply,
    end: State,
) -> None:
    conn = _reach(start, command=command)
    assert conn.send(event) == event.encode()
    assert conn.state is end


@pytest.mark.parametrize(("state", "command"), ALL_REACHABLE, ids=REACHABLE_IDS)
def test_trailing_data_is_only_available_once_established(state: State, command: Command) -> None:
    conn = _reach(state, command=command)
    if state is State.ESTABLISHED:
        assert conn.trailing_data == (b"", False)
    else:
        with pytest.raises(LocalProtocolError):
            conn.trailing_data  # noqa: B018


def test_trailing_data_hands_the_pipelined_bytes_over_once() -> None:
    conn = _reach(State.SEND_REPLY)
    conn.receive_data(b"early bytes")
    conn.send(CommandReply(Reply.SUCCEEDED, BOUND))
    assert conn.trailing_data == (b"early bytes", False)
    assert conn.trailing_data == (b"", False)


@pytest.mark.parametrize("state", [State.ESTABLISHED, State.CLOSED, State.ERROR])
def test_next_event_after_the_handshake_is_a_local_error(state: State) -> None:
    conn = _reach(state)
    with pytest.raises(LocalProtocolError):
        conn.next_event()


@pytest.mark.parametrize("state", SENDING, ids=[s.name for s in SENDING])
def test_next_event_while_the_client_waits_for_us_is_paused(state: State) -> None:
    conn = _reach(state, command=Command.BIND)
    conn.receive_data(b"pipelined")
    assert conn.next_event() is PAUSED
    assert conn.state is state


def test_request_is_kept_for_the_caller() -> None:
    conn = _reach(State.SEND_REPLY, command=Command.UDP_ASSOCIATE)
    assert conn.request == CommandRequest(Command.UDP_ASSOCIATE, TARGET)
    assert _reach(State.AWAIT_REQUEST).request is None


def test_data_after_end_of_stream_is_a_local_error() -> None:
    conn = ServerConnection()
    conn.receive_data(b"")
    with pytest.raises(LocalProtocolError):
        conn.receive_data(b"\x05")


# --- every (state, event) pair: the transition table, or a LocalProtocolError ---------------


ANY_ADDRESS = Address.from_host("192.0.2.99", 9)
SERVER_EVENTS: list[object] = [
    *(MethodSelection(m) for m in AuthMethod),
    *(AuthReply(s) for s in AuthStatus),
    *(CommandReply(r, ANY_ADDRESS) for r in Reply),
]
CLIENT_EVENTS: list[object] = [GREETING, CREDENTIALS, CONNECT, ConnectionClosed()]


class Model:
    """What the RFCs allow the server to send, written independently of connection.py."""

    def __init__(self, state: State, command: Command, offered: tuple[int, ...]) -> None:
        self.state = state
        self.command = command
        self.offered = offered

    def after_send(self, event: object) -> State | None:
        """The next state, or None when sending ``event`` now is not allowed."""
        if isinstance(event, MethodSelection) and self.state is State.SEND_METHOD:
            if event.method is AuthMethod.NO_ACCEPTABLE_METHODS:
                return State.CLOSED
            if event.method not in self.offered:
                return None  # RFC 1928 §3: the server selects one of the methods offered
            return {
                AuthMethod.USERNAME_PASSWORD: State.AWAIT_CREDENTIALS,
                AuthMethod.NO_AUTHENTICATION_REQUIRED: State.AWAIT_REQUEST,
            }.get(event.method)
        if isinstance(event, AuthReply) and self.state is State.SEND_AUTH_REPLY:
            return State.AWAIT_REQUEST if event.status is AuthStatus.SUCCESS else State.CLOSED
        if isinstance(event, CommandReply) and self.state is State.SEND_REPLY:
            if event.reply is not Reply.SUCCEEDED:
                return State.CLOSED
            return State.SEND_SECOND_REPLY if self.command is Command.BIND else State.ESTABLISHED
        if isinstance(event, CommandReply) and self.state is State.SEND_SECOND_REPLY:
            return State.ESTABLISHED if event.reply is Reply.SUCCEEDED else State.CLOSED
        return None


def _check_send(conn: ServerConnection, model: Model, event: Any) -> None:
    expected = model.after_send(event)
    if expected is None:
        with pytest.raises(LocalProtocolError):
            conn.send(event)
        # A refused send leaves the connection unusable, never half-moved (house rule 2).
        assert conn.state is State.ERROR
        model.state = State.ERROR
    else:
        assert conn.send(event) == event.encode()
        assert conn.state is expected
        model.state = expected


@pytest.mark.parametrize(("state", "command"), ALL_REACHABLE, ids=REACHABLE_IDS)
@pytest.mark.parametrize(
    "event",
    SERVER_EVENTS + CLIENT_EVENTS,
    ids=[repr(e) for e in SERVER_EVENTS + CLIENT_EVENTS],
)
def test_send_of_any_event_in_any_state_follows_the_table_or_is_a_local_error(
    state: State, command: Command, event: object
) -> None:
    conn = _reach(state, command=command)
    _check_send(conn, Model(state, command, offered=(0x00, 0x02)), event)


@pytest.mark.parametrize(
    ("offered", "method"),
    [((0x00,), AuthMethod.USERNAME_PASSWORD), ((0x02,), AuthMethod.NO_AUTHENTICATION_REQUIRED)],
)
def test_selecting_a_method_the_client_did_not_offer_is_a_local_error(
    offered: tuple[int, ...], method: AuthMethod
) -> None:
    conn = _reach(State.SEND_METHOD, offered=offered)
    with pytest.raises(LocalProtocolError, match="not offered"):
        conn.send(MethodSelection(method))
    assert conn.state is State.ERROR


def _valid_client_message(
    state: State, command: Command, offered: tuple[int, ...]
) -> Greeting | Credentials | CommandRequest:
    if state is State.AWAIT_GREETING:
        return Greeting(offered)
    if state is State.AWAIT_CREDENTIALS:
        return CREDENTIALS
    return CommandRequest(command, TARGET)


@settings(max_examples=300, deadline=None)
@given(
    start=st.sampled_from(ALL_REACHABLE),
    offered=st.sampled_from([(0x00,), (0x02,), (0x00, 0x02), (0x01,), (0x02, 0x01, 0x00)]),
    steps=st.lists(
        st.one_of(
            st.sampled_from(SERVER_EVENTS + CLIENT_EVENTS),
            st.builds(CommandReply, st.sampled_from(Reply), addresses),
            st.just("client speaks"),
            st.just("client closes"),
        ),
        max_size=12,
    ),
)
def test_any_sequence_of_sends_and_client_messages_keeps_the_state_machine_consistent(
    start: tuple[State, Command], offered: tuple[int, ...], steps: list[object]
) -> None:
    state, command = start
    if state is State.SEND_METHOD or state is State.AWAIT_GREETING:
        conn = _reach(state, command=command, offered=offered)
    else:
        conn = _reach(state, command=command)
        offered = (0x00, 0x02)
    model = Model(state, command, offered)
    for step in steps:
        if step in ("client speaks", "client closes"):
            if model.state not in RECEIVING:
                continue
            if step == "client closes":
                conn.receive_data(b"")
                assert conn.next_event() == ConnectionClosed()
                model.state = State.CLOSED
                continue
            message = _valid_client_message(model.state, command, offered)
            conn.receive_data(message.encode())
            assert conn.next_event() == message
            model.state = {
                State.AWAIT_GREETING: State.SEND_METHOD,
                State.AWAIT_CREDENTIALS: State.SEND_AUTH_REPLY,
                State.AWAIT_REQUEST: State.SEND_REPLY,
            }[model.state]
            assert conn.state is model.state
        else:
            _check_send(conn, model, step)
