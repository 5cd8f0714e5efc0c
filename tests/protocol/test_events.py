"""The SOCKS5 and RFC 1929 messages: exact wire bytes, incremental parsing, round trips."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_strategies import (
    auth_replies,
    credentials,
    greetings,
    method_selections,
    replies,
    requests,
    short_strings,
)

from socksauth.protocol import (
    Address,
    AuthMethod,
    AuthReply,
    AuthStatus,
    Command,
    CommandReply,
    CommandRequest,
    Credentials,
    Greeting,
    MethodSelection,
    RemoteProtocolError,
    Reply,
)
from socksauth.protocol.buffer import ReceiveBuffer
from socksauth.protocol.events import (
    parse_auth_reply,
    parse_credentials,
    parse_greeting,
    parse_method_selection,
    parse_reply,
    parse_request,
)

BOUNDED = settings(max_examples=200, deadline=None)

Parser = Callable[[ReceiveBuffer], object]

IPV4 = Address.from_host("192.0.2.1", 80)
IPV6 = Address.from_host("2001:db8::1", 443)
DOMAIN = Address.from_host("example.com", 8080)
IPV4_WIRE = b"\x01\xc0\x00\x02\x01\x00\x50"
IPV6_WIRE = b"\x04\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x01\x01\xbb"
DOMAIN_WIRE = b"\x03\x0bexample.com\x1f\x90"

# (message, its exact wire bytes, the parser that reads it)
MESSAGES: list[tuple[object, bytes, Parser]] = [
    (Greeting((0x00,)), b"\x05\x01\x00", parse_greeting),
    (Greeting((0x00, 0x02)), b"\x05\x02\x00\x02", parse_greeting),
    (Greeting((0x01, 0x02, 0x80, 0xFE)), b"\x05\x04\x01\x02\x80\xfe", parse_greeting),
    (Greeting(tuple(range(255))), b"\x05\xff" + bytes(range(255)), parse_greeting),
    (Credentials("alice", "secret"), b"\x01\x05alice\x06secret", parse_credentials),
    (
        Credentials("jürgen", "pässwörd"),
        b"\x01\x07j\xc3\xbcrgen\x0ap\xc3\xa4ssw\xc3\xb6rd",
        parse_credentials,
    ),
    (
        Credentials("u" * 255, "p" * 255),
        b"\x01\xff" + b"u" * 255 + b"\xff" + b"p" * 255,
        parse_credentials,
    ),
    (CommandRequest(Command.CONNECT, IPV4), b"\x05\x01\x00" + IPV4_WIRE, parse_request),
    (CommandRequest(Command.CONNECT, IPV6), b"\x05\x01\x00" + IPV6_WIRE, parse_request),
    (CommandRequest(Command.CONNECT, DOMAIN), b"\x05\x01\x00" + DOMAIN_WIRE, parse_request),
    (CommandRequest(Command.BIND, IPV4), b"\x05\x02\x00" + IPV4_WIRE, parse_request),
    (CommandRequest(Command.BIND, IPV6), b"\x05\x02\x00" + IPV6_WIRE, parse_request),
    (CommandRequest(Command.BIND, DOMAIN), b"\x05\x02\x00" + DOMAIN_WIRE, parse_request),
    (CommandRequest(Command.UDP_ASSOCIATE, IPV4), b"\x05\x03\x00" + IPV4_WIRE, parse_request),
    (CommandRequest(Command.UDP_ASSOCIATE, IPV6), b"\x05\x03\x00" + IPV6_WIRE, parse_request),
    (CommandRequest(Command.UDP_ASSOCIATE, DOMAIN), b"\x05\x03\x00" + DOMAIN_WIRE, parse_request),
    (MethodSelection(AuthMethod.USERNAME_PASSWORD), b"\x05\x02", parse_method_selection),
    (MethodSelection(AuthMethod.NO_AUTHENTICATION_REQUIRED), b"\x05\x00", parse_method_selection),
    (MethodSelection(AuthMethod.NO_ACCEPTABLE_METHODS), b"\x05\xff", parse_method_selection),
    (AuthReply(AuthStatus.SUCCESS), b"\x01\x00", parse_auth_reply),
    (AuthReply(AuthStatus.FAILURE), b"\x01\x01", parse_auth_reply),
    (CommandReply(Reply.SUCCEEDED, IPV4), b"\x05\x00\x00" + IPV4_WIRE, parse_reply),
    (CommandReply(Reply.SUCCEEDED, IPV6), b"\x05\x00\x00" + IPV6_WIRE, parse_reply),
    (CommandReply(Reply.SUCCEEDED, DOMAIN), b"\x05\x00\x00" + DOMAIN_WIRE, parse_reply),
    (
        CommandReply(Reply.CONNECTION_REFUSED, Address.unspecified()),
        b"\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00",
        parse_reply,
    ),
    (
        CommandReply(Reply.ADDRESS_TYPE_NOT_SUPPORTED, Address.unspecified()),
        b"\x05\x08\x00\x01\x00\x00\x00\x00\x00\x00",
        parse_reply,
    ),
]
MESSAGE_IDS = [f"{type(m).__name__}-{i}" for i, (m, _, _) in enumerate(MESSAGES)]


def _parse(parser: Parser, wire: bytes) -> tuple[object, bytes]:
    buffer = ReceiveBuffer(4096)
    buffer.feed(wire)
    event = parser(buffer)
    return event, buffer.take_all()


@pytest.mark.parametrize(("message", "wire", "parser"), MESSAGES, ids=MESSAGE_IDS)
def test_encode_writes_the_rfc_wire_format(message: object, wire: bytes, parser: Parser) -> None:
    assert message.encode() == wire  # type: ignore[attr-defined]


@pytest.mark.parametrize(("message", "wire", "parser"), MESSAGES, ids=MESSAGE_IDS)
def test_parser_reads_the_message_and_leaves_the_next_bytes(
    message: object, wire: bytes, parser: Parser
) -> None:
    assert _parse(parser, wire + b"NEXT") == (message, b"NEXT")


@pytest.mark.parametrize(("message", "wire", "parser"), MESSAGES, ids=MESSAGE_IDS)
def test_parser_waits_on_every_prefix_and_consumes_nothing_until_complete(
    message: object, wire: bytes, parser: Parser
) -> None:
    buffer = ReceiveBuffer(4096)
    for byte in wire[:-1]:
        buffer.feed(bytes((byte,)))
        assert parser(buffer) is None
    buffer.feed(wire[-1:])
    assert parser(buffer) == message
    assert len(buffer) == 0


def test_auth_reply_parser_treats_every_nonzero_status_as_failure() -> None:
    assert _parse(parse_auth_reply, b"\x01\x7f") == (AuthReply(AuthStatus.FAILURE), b"")


@pytest.mark.parametrize(
    ("parser", "wire", "message"),
    [
        (parse_method_selection, b"\x04\x02", "version 0x04"),
        (parse_method_selection, b"\x05\x03", "unknown method 0x03"),
        (parse_auth_reply, b"\x05\x00", "version 0x05"),
        (parse_reply, b"\x04\x00\x00" + IPV4_WIRE, "version 0x04"),
        (parse_reply, b"\x05\x09\x00" + IPV4_WIRE, "unknown reply code 0x09"),
        (parse_reply, b"\x05\x00\x00\x02" + IPV4_WIRE[1:], "unknown address type"),
    ],
)
def test_client_side_parsers_reject_malformed_server_messages(
    parser: Parser, wire: bytes, message: str
) -> None:
    with pytest.raises(RemoteProtocolError, match=message):
        _parse(parser, wire)


# --- Credentials never show the password -------------------------------------------------


def test_credentials_repr_shows_the_username_but_never_the_password() -> None:
    creds = Credentials("alice", "hunter2-secret")
    for text in (repr(creds), str(creds), f"{creds}", repr([creds]), repr({"c": creds})):
        assert "hunter2-secret" not in text
        assert "alice" in text


@BOUNDED
@given(short_strings, short_strings)
def test_credentials_repr_does_not_depend_on_the_password(username: str, password: str) -> None:
    # Equal reprs for any two passwords: nothing of the password can leak into it.
    assert repr(Credentials(username, password)) == repr(Credentials(username, "x"))


@pytest.mark.parametrize(
    ("username", "password"),
    [("u" * 256, "p"), ("u", "p" * 256), ("é" * 128, "p"), ("u", "é" * 128)],
    ids=["username-256", "password-256", "username-256-utf8", "password-256-utf8"],
)
def test_credentials_encode_refuses_fields_over_255_bytes(username: str, password: str) -> None:
    with pytest.raises(ValueError, match="255"):
        Credentials(username, password).encode()


def test_greeting_encode_refuses_more_than_255_methods() -> None:
    with pytest.raises(ValueError):
        Greeting(tuple([2] * 256)).encode()


# --- round trips -------------------------------------------------------------------------

ROUND_TRIPS = [
    (greetings, parse_greeting),
    (credentials, parse_credentials),
    (requests, parse_request),
    (method_selections, parse_method_selection),
    (auth_replies, parse_auth_reply),
    (replies, parse_reply),
]


@pytest.mark.parametrize(
    ("messages", "parser"),
    ROUND_TRIPS,
    ids=["greeting", "credentials", "request", "method-selection", "auth-reply", "reply"],
)
@BOUNDED
@given(data=st.data())
def test_parse_of_encode_gives_back_the_message(
    messages: st.SearchStrategy[object], parser: Parser, data: st.DataObject
) -> None:
    message = data.draw(messages)
    rest = data.draw(st.binary(max_size=16))
    wire = message.encode()  # type: ignore[attr-defined]
    assert _parse(parser, wire + rest) == (message, rest)
    # One byte short is never a message.
    assert _parse(parser, wire[:-1])[0] is None


@BOUNDED
@given(short_strings, short_strings)
def test_credentials_wire_lengths_match_the_utf8_byte_counts(username: str, password: str) -> None:
    wire = Credentials(username, password).encode()
    name = username.encode("utf-8", "surrogateescape")
    secret = password.encode("utf-8", "surrogateescape")
    assert wire == b"\x01" + bytes((len(name),)) + name + bytes((len(secret),)) + secret
