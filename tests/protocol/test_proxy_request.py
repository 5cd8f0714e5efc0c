"""ProxyConnection and its helpers (protocol/http.py): request heads in, targets out."""

from __future__ import annotations

import base64
import itertools

import h11
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from socksauth.protocol import NEED_DATA, PAUSED, Address, AddressType, RemoteProtocolError, Reply
from socksauth.protocol.events import ConnectionClosed, Credentials
from socksauth.protocol.http import (
    MAX_HEAD_BYTES,
    ProxyConnection,
    ProxyRequest,
    RequestForm,
    error_response,
    established_response,
    forwarded_headers,
    parse_authority,
    status_for,
)

BOUNDED = settings(max_examples=200, deadline=None)


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


CONNECT_HEAD = (
    b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
    b"Proxy-Authorization: " + basic("alice", "pass:word") + b"\r\n\r\n"
)
GET_HEAD = b"GET http://example.com:8080/a/b?c=d HTTP/1.1\r\nHost: example.com:8080\r\n\r\n"


def events(conn: ProxyConnection, data: bytes, step: int | None = None) -> list[object]:
    """Feed ``data`` whole or ``step`` bytes at a time; every event up to NEED_DATA/PAUSED."""
    found: list[object] = []
    chunks = [data] if step is None else [data[i : i + step] for i in range(0, len(data), step)]
    for chunk in chunks:
        conn.receive_data(chunk)
        while (event := conn.next_event()) not in (NEED_DATA, PAUSED):
            found.append(event)
            if isinstance(event, ConnectionClosed):
                return found
    return found


def request_of(data: bytes) -> ProxyRequest:
    found = events(ProxyConnection(), data)
    assert isinstance(found[0], ProxyRequest)
    return found[0]


def refusal(data: bytes) -> bytes | None:
    with pytest.raises(RemoteProtocolError) as raised:
        events(ProxyConnection(), data)
    return raised.value.reply_hint


# --- whole and byte by byte -------------------------------------------------------------------


@pytest.mark.parametrize("head", [CONNECT_HEAD, GET_HEAD], ids=["connect", "absolute-form"])
def test_a_head_fed_whole_or_byte_by_byte_gives_the_same_request(head: bytes) -> None:
    whole = events(ProxyConnection(), head)
    assert events(ProxyConnection(), head, step=1) == whole
    assert isinstance(whole[0], ProxyRequest)


@BOUNDED
@given(st.lists(st.integers(min_value=1, max_value=len(CONNECT_HEAD) - 1), max_size=6))
def test_any_split_of_a_connect_head_gives_the_same_request_and_trailing_data(
    cuts: list[int],
) -> None:
    data = CONNECT_HEAD + b"tunnel bytes"
    points = [0, *sorted(set(cuts)), len(data)]
    conn = ProxyConnection()
    found: list[object] = []
    for start, end in itertools.pairwise(points):
        conn.receive_data(data[start:end])
        while (event := conn.next_event()) not in (NEED_DATA, PAUSED):
            found.append(event)
    assert found[0] == request_of(CONNECT_HEAD)
    conn.send(established_response())
    assert conn.trailing_data == (b"tunnel bytes", False)


@BOUNDED
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_a_remote_protocol_error(data: bytes) -> None:
    conn = ProxyConnection()
    try:
        events(conn, data)
        events(conn, b"", step=None)
    except RemoteProtocolError as error:
        assert error.reply_hint is not None
        assert error.reply_hint.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 431 "))


# --- what a request says ----------------------------------------------------------------------


def test_connect_gives_the_authority_and_basic_credentials_with_a_colon_in_the_password() -> None:
    request = request_of(CONNECT_HEAD)
    assert request.form is RequestForm.AUTHORITY
    assert request.target == Address(AddressType.DOMAINNAME, "example.com", 443)
    assert request.credentials == Credentials("alice", "pass:word")
    assert "pass:word" not in repr(request)


def test_the_2xx_to_connect_has_no_body_framing_and_keeps_the_pipelined_bytes() -> None:
    conn = ProxyConnection()
    events(conn, CONNECT_HEAD + b"\x16\x03\x01")
    assert conn.send(established_response()) == b"HTTP/1.1 200 Connection established\r\n\r\n"
    assert conn.trailing_data == (b"\x16\x03\x01", False)


def test_an_absolute_form_request_gives_its_origin_and_origin_form_path() -> None:
    request = request_of(GET_HEAD)
    assert request.form is RequestForm.ABSOLUTE
    assert request.target == Address(AddressType.DOMAINNAME, "example.com", 8080)
    assert (request.path, request.method, request.credentials) == (b"/a/b?c=d", b"GET", None)
    assert request_of(b"GET http://Example.COM HTTP/1.1\r\nHost: x\r\n\r\n").path == b"/"
    assert request_of(b"GET http://Example.COM HTTP/1.1\r\nHost: x\r\n\r\n").target.port == 80


@pytest.mark.parametrize(
    ("authority", "address"),
    [
        (b"127.0.0.1:80", Address(AddressType.IPV4, "127.0.0.1", 80)),
        (b"[::1]:443", Address(AddressType.IPV6, "::1", 443)),
        (b"Example.org:8443", Address(AddressType.DOMAINNAME, "example.org", 8443)),
    ],
)
def test_authorities_become_addresses(authority: bytes, address: Address) -> None:
    assert parse_authority(authority) == address


@pytest.mark.parametrize(
    "authority",
    [
        b"example.org",
        b"example.org:",
        b":80",
        b"::1:80",
        b"[::1",
        b"h:0",
        b"h:70000",
        b"h:8x",
        b"[::1]x",
        b"user@h:80",
        b"[nonsense]:80",
    ],
)
def test_malformed_authorities_are_refused(authority: bytes) -> None:
    with pytest.raises(ValueError):
        parse_authority(authority)


def test_scheme_case_and_other_schemes_for_credentials() -> None:
    token = base64.b64encode(b"bob:pw")
    lower = b"CONNECT h:1 HTTP/1.1\r\nHost: h\r\nProxy-Authorization: basic " + token + b"\r\n\r\n"
    assert request_of(lower).credentials == Credentials("bob", "pw")
    other = b"CONNECT h:1 HTTP/1.1\r\nHost: h\r\nProxy-Authorization: Negotiate abc\r\n\r\n"
    assert request_of(other).credentials is None


# --- refused heads ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (b"GET / HTTP/1.1\r\nHost: h\r\n\r\n", 400),  # origin form: not a proxy request
        (b"GET https://h/ HTTP/1.1\r\nHost: h\r\n\r\n", 400),  # https:// is CONNECT's job
        (b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"CONNECT h HTTP/1.1\r\nHost: h\r\n\r\n", 400),  # no port
        (b"CONNECT h:1 HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host (RFC 9112 §3.2)
        (b"CONNECT h:1 HTTP/1.1\r\nHost: h\r\nProxy-Authorization: Basic !!\r\n\r\n", 400),
        (b"CONNECT h:1 HTTP/1.1\r\nHost: h\r\nProxy-Authorization: Basic YWxpY2U=\r\n\r\n", 400),
        (b"CONNECT h:1 HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES, 431),
        (b"GARBAGE\r\n\r\n", 400),
    ],
    ids=[
        "origin-form",
        "https-absolute",
        "asterisk",
        "no-port",
        "no-host",
        "not-base64",
        "no-colon",
        "over-16-KiB",
        "no-request-line",
    ],
)
def test_malformed_heads_are_refused_with_a_status(head: bytes, status: int) -> None:
    hint = refusal(head)
    assert hint is not None and hint.startswith(b"HTTP/1.1 %d " % status)
    assert hint.endswith(b"Connection: close\r\n\r\n")


def test_a_head_just_under_the_limit_is_read() -> None:
    filler = b"X: " + b"a" * (MAX_HEAD_BYTES - 200) + b"\r\n"
    head = b"CONNECT h:1 HTTP/1.1\r\nHost: h\r\n" + filler + b"\r\n"
    assert request_of(head).target.port == 1


def test_the_end_of_the_stream_before_a_head_is_connection_closed() -> None:
    conn = ProxyConnection()
    conn.receive_data(b"")
    assert conn.next_event() == ConnectionClosed()


# --- responses and forwarding -------------------------------------------------------------------


def test_the_407_names_the_basic_realm() -> None:
    response = error_response(407, challenge=True)
    assert response.startswith(b"HTTP/1.1 407 Proxy Authentication Required\r\n")
    assert b'\r\nProxy-Authenticate: Basic realm="socksauth"\r\n' in response


@pytest.mark.parametrize(
    ("reply", "status"),
    [
        (Reply.SUCCEEDED, 200),
        (Reply.CONNECTION_NOT_ALLOWED, 403),
        (Reply.TTL_EXPIRED, 504),
        (Reply.CONNECTION_REFUSED, 502),
        (Reply.HOST_UNREACHABLE, 502),
        (Reply.NETWORK_UNREACHABLE, 502),
        (Reply.GENERAL_FAILURE, 502),
    ],
)
def test_socks_replies_map_to_statuses(reply: Reply, status: int) -> None:
    assert status_for(reply) == status


def test_hop_by_hop_fields_and_the_proxy_credentials_are_not_forwarded() -> None:
    headers = [
        (b"host", b"h"),
        (b"connection", b"keep-alive, X-Secret-Hop"),
        (b"keep-alive", b"timeout=5"),
        (b"proxy-connection", b"keep-alive"),
        (b"proxy-authorization", b"Basic YWxpY2U6cHc="),
        (b"x-secret-hop", b"1"),
        (b"te", b"trailers"),
        (b"upgrade", b"websocket"),
        (b"accept", b"*/*"),
        (b"content-length", b"3"),
    ]
    assert forwarded_headers(headers) == [
        (b"host", b"h"),
        (b"accept", b"*/*"),
        (b"content-length", b"3"),
    ]


def test_a_chunked_message_stays_chunked_for_h11() -> None:
    headers = [(b"transfer-encoding", b"chunked"), (b"content-length", b"9"), (b"a", b"b")]
    assert forwarded_headers(headers) == [(b"a", b"b"), (b"transfer-encoding", b"chunked")]


def test_keep_alive_serves_a_second_request_after_the_first_response() -> None:
    conn = ProxyConnection()
    found = events(conn, GET_HEAD + GET_HEAD.replace(b"/a/b", b"/second"))
    assert isinstance(found[0], ProxyRequest) and isinstance(found[1], h11.EndOfMessage)
    conn.send(h11.Response(status_code=200, headers=[(b"content-length", b"0")]))
    conn.send(h11.EndOfMessage())
    assert conn.keep_alive
    conn.start_next_cycle()
    second = conn.next_event()  # already received: pipelined behind the first
    assert isinstance(second, ProxyRequest) and second.path == b"/second?c=d"
