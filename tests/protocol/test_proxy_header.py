"""PROXY protocol v1/v2 headers: whole, byte by byte and split anywhere parse the same; every
malformed header is refused with its own error; random bytes raise nothing else."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from socksauth.protocol import (
    Address,
    HeaderKind,
    LocalProtocolError,
    ProtocolError,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderReader,
)
from socksauth.protocol.proxy_header import V2_MAX_BODY_BYTES, V2_SIGNATURE, starts_like_header

GREETING = b"\x05\x01\x02"


def v2(command: int, family: int, body: bytes, version: int = 2) -> bytes:
    """Signature | ver<<4|cmd | fam<<4|transport (given whole) | len | body."""
    return V2_SIGNATURE + bytes(((version << 4) | command, family)) + struct.pack("!H", len(body))


def v2_header(command: int, family: int, body: bytes, version: int = 2) -> bytes:
    return v2(command, family, body, version) + body


def inet(source: str, destination: str, sport: int, dport: int) -> bytes:
    return (
        ipaddress.ip_address(source).packed
        + ipaddress.ip_address(destination).packed
        + struct.pack("!HH", sport, dport)
    )


def tlv(kind: int, value: bytes) -> bytes:
    return bytes((kind,)) + struct.pack("!H", len(value)) + value


CLIENT4 = Address.from_host("203.0.113.7", 51000)
SERVER4 = Address.from_host("192.0.2.10", 1080)
CLIENT6 = Address.from_host("2001:db8::7", 51000)
SERVER6 = Address.from_host("2001:db8::10", 1080)

VALID = [
    (
        b"PROXY TCP4 203.0.113.7 192.0.2.10 51000 1080\r\n",
        ProxyHeader(version=1, kind=HeaderKind.PROXY, source=CLIENT4, destination=SERVER4),
    ),
    (
        b"PROXY TCP6 2001:db8::7 2001:DB8:0:0:0:0:0:10 51000 1080\r\n",
        ProxyHeader(version=1, kind=HeaderKind.PROXY, source=CLIENT6, destination=SERVER6),
    ),
    (
        b"PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n",
        ProxyHeader(
            version=1,
            kind=HeaderKind.PROXY,
            source=Address.from_host("0.0.0.0", 0),
            destination=Address.from_host("255.255.255.255", 65535),
        ),
    ),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(version=1, kind=HeaderKind.UNKNOWN)),
    (
        b"PROXY UNKNOWN ffff:f::f:ffff ffff:f::f:ffff 65535 65535\r\n",
        ProxyHeader(version=1, kind=HeaderKind.UNKNOWN),
    ),
    (
        # The longest line there is: 107 bytes with the CRLF.
        b"PROXY UNKNOWN " + b"f" * 91 + b"\r\n",
        ProxyHeader(version=1, kind=HeaderKind.UNKNOWN),
    ),
    (
        v2_header(1, 0x11, inet("203.0.113.7", "192.0.2.10", 51000, 1080)),
        ProxyHeader(version=2, kind=HeaderKind.PROXY, source=CLIENT4, destination=SERVER4),
    ),
    (
        v2_header(1, 0x21, inet("2001:db8::7", "2001:db8::10", 51000, 1080)),
        ProxyHeader(version=2, kind=HeaderKind.PROXY, source=CLIENT6, destination=SERVER6),
    ),
    (
        # TLVs (ALPN, authority, NOOP padding, SSL with sub-TLVs) are skipped.
        v2_header(
            1,
            0x11,
            inet("203.0.113.7", "192.0.2.10", 51000, 1080)
            + tlv(0x01, b"h2")
            + tlv(0x02, b"proxy.example")
            + tlv(0x04, b"")
            + tlv(0x20, b"\x01\x00\x00\x00\x00" + tlv(0x21, b"TLSv1.3")),
        ),
        ProxyHeader(version=2, kind=HeaderKind.PROXY, source=CLIENT4, destination=SERVER4),
    ),
    (v2_header(0, 0x00, b""), ProxyHeader(version=2, kind=HeaderKind.LOCAL)),
    (
        # LOCAL: the block is skipped whatever it holds, its family ignored.
        v2_header(0, 0xFF, b"\x99" * 40),
        ProxyHeader(version=2, kind=HeaderKind.LOCAL),
    ),
    (v2_header(1, 0x00, b""), ProxyHeader(version=2, kind=HeaderKind.UNKNOWN)),
    (v2_header(1, 0x10, b"\x00" * 12), ProxyHeader(version=2, kind=HeaderKind.UNKNOWN)),
    (
        # UDP over IPv4 and AF_UNIX fall back to the real endpoints.
        v2_header(1, 0x12, inet("203.0.113.7", "192.0.2.10", 53, 53)),
        ProxyHeader(version=2, kind=HeaderKind.UNKNOWN),
    ),
    (v2_header(1, 0x31, b"\x00" * 216), ProxyHeader(version=2, kind=HeaderKind.UNKNOWN)),
]
VALID_IDS = [
    "v1-tcp4",
    "v1-tcp6",
    "v1-tcp4-extremes",
    "v1-unknown-short",
    "v1-unknown-with-addresses",
    "v1-107-bytes",
    "v2-tcp4",
    "v2-tcp6",
    "v2-tcp4-tlvs",
    "v2-local",
    "v2-local-with-block",
    "v2-unspec",
    "v2-inet-unspec-transport",
    "v2-udp4",
    "v2-unix-stream",
]


def read_in_pieces(pieces: list[bytes]) -> ProxyHeader:
    reader = ProxyHeaderReader()
    results = [reader.receive_data(piece) for piece in pieces]
    assert all(result is None for result in results[:-1])
    header = results[-1]
    assert header is not None
    return header


@pytest.mark.parametrize(("wire", "expected"), VALID, ids=VALID_IDS)
def test_a_whole_header_parses(wire: bytes, expected: ProxyHeader) -> None:
    assert read_in_pieces([wire]) == expected


@pytest.mark.parametrize(("wire", "expected"), VALID, ids=VALID_IDS)
def test_a_header_fed_byte_by_byte_parses_the_same(wire: bytes, expected: ProxyHeader) -> None:
    assert read_in_pieces([wire[i : i + 1] for i in range(len(wire))]) == expected


@pytest.mark.parametrize(("wire", "expected"), VALID, ids=VALID_IDS)
def test_bytes_after_the_header_are_its_trailing_data(wire: bytes, expected: ProxyHeader) -> None:
    header = read_in_pieces([wire + GREETING])
    assert header.trailing_data == GREETING
    assert header.kind is expected.kind and header.source == expected.source


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(VALID),
    st.lists(st.integers(min_value=1, max_value=200), max_size=12),
    st.binary(max_size=20),
)
def test_a_header_split_anywhere_parses_the_same(
    case: tuple[bytes, ProxyHeader], cuts: list[int], after: bytes
) -> None:
    wire, expected = case
    stream = wire + after
    points = sorted({min(cut, len(wire)) for cut in cuts} | {len(wire)})
    pieces, start = [], 0
    for point in points:
        if point > start:
            pieces.append(stream[start:point])
            start = point
    pieces[-1] += stream[len(wire) :]
    header = read_in_pieces(pieces)
    assert header.kind is expected.kind
    assert (header.source, header.destination) == (expected.source, expected.destination)
    assert header.trailing_data == after


ADDRESSES4 = inet("203.0.113.7", "192.0.2.10", 51000, 1080)

MALFORMED = [
    (GREETING, "first byte is 0x05"),
    (b"GET / HTTP/1.1\r\n\r\n", "first byte is 0x47"),
    (b"PROXZ TCP4", "not a PROXY header"),
    (b"PROXY\tTCP4", "not a PROXY header"),
    (b"PROXY TCP4 203.0.113.7 192.0.2.10 51000 1080\n", "LF without CR"),
    (b"PROXY TCP4 203.0.113.7 192.0.2.10 51000 1080\rX", "CR not followed by LF"),
    (b"PROXY UNKNOWN " + b"f" * 92 + b"\r\n", "no CRLF in its first 107 bytes"),
    (b"PROXY TCP4 " + b"1" * 200, "no CRLF in its first 107 bytes"),
    (b"PROXY TCP5 203.0.113.7 192.0.2.10 51000 1080\r\n", "'TCP5' is not TCP4, TCP6"),
    (b"PROXY tcp4 203.0.113.7 192.0.2.10 51000 1080\r\n", "'tcp4' is not TCP4"),
    (b"PROXY TCP4 203.0.113.7 192.0.2.10 51000\r\n", "has 5 fields"),
    (b"PROXY TCP4 203.0.113.7  192.0.2.10 51000 1080\r\n", "has 7 fields"),
    (b"PROXY TCP4 203.0.113.7 192.0.2.10 51000 1080 \r\n", "has 7 fields"),
    (b"PROXY TCP4 203.0.113.007 192.0.2.10 51000 1080\r\n", "source address '203.0.113.007'"),
    (b"PROXY TCP4 203.0.113.7 2001:db8::10 51000 1080\r\n", "destination address"),
    (b"PROXY TCP6 203.0.113.7 2001:db8::10 51000 1080\r\n", "not an IPv6 address"),
    (b"PROXY TCP6 fe80::1%eth0 2001:db8::10 51000 1080\r\n", "source address 'fe80::1%eth0'"),
    (b"PROXY TCP4 203.0.113.7 192.0.2.10 051000 1080\r\n", "source port '051000'"),
    (b"PROXY TCP4 203.0.113.7 192.0.2.10 0123 1080\r\n", "source port '0123'"),
    (b"PROXY TCP4 203.0.113.7 192.0.2.10 51000 65536\r\n", "destination port '65536'"),
    (b"PROXY TCP4 203.0.113.7 192.0.2.10 -1 1080\r\n", "source port '-1'"),
    (b"PROXY TCP4 203.0.113.7 192.0.2.10 +1 1080\r\n", "source port"),
    (b"PROXY TCP4 203.0.113.7 192.0.2.10  1080\r\n", "source port ''"),
    (b"PROXY TCP4 203.0.113.\xb7 192.0.2.10 51000 1080\r\n", "not US-ASCII"),
    (V2_SIGNATURE[:5] + b"X", "v2 signature does not match"),
    (v2_header(1, 0x11, ADDRESSES4, version=1), "version 1, not 2"),
    (v2_header(1, 0x11, ADDRESSES4, version=3), "version 3, not 2"),
    (v2_header(2, 0x11, ADDRESSES4), "command 0x2"),
    (v2_header(0xF, 0x11, ADDRESSES4), "command 0xf"),
    (v2_header(1, 0x41, ADDRESSES4), "address family 0x4"),
    (v2_header(1, 0x13, ADDRESSES4), "transport protocol 0x3"),
    (v2_header(1, 0x11, ADDRESSES4[:11]), "11 bytes of addresses, family 0x1 needs 12"),
    (v2_header(1, 0x21, ADDRESSES4), "12 bytes of addresses, family 0x2 needs 36"),
    (v2_header(1, 0x31, b"\x00" * 215), "needs 216"),
    (v2_header(1, 0x11, ADDRESSES4 + b"\x01\x00"), "TLV at byte 28 is cut short"),
    (v2_header(1, 0x11, ADDRESSES4 + b"\x01\x00\x05abc"), "TLV 0x01 at byte 28 declares 5"),
    (
        v2_header(1, 0x11, ADDRESSES4 + tlv(0x04, b"") + b"\x20\xff\xff"),
        "TLV 0x20 at byte 31 declares 65535 bytes, 0 remain",
    ),
    (
        v2(1, 0x11, b"\x00" * (V2_MAX_BODY_BYTES + 1)),
        f"declares {V2_MAX_BODY_BYTES + 1} bytes .* at most {V2_MAX_BODY_BYTES}",
    ),
]


@pytest.mark.parametrize(("wire", "message"), MALFORMED)
def test_a_malformed_header_is_refused_with_its_own_error(wire: bytes, message: str) -> None:
    with pytest.raises(ProxyHeaderError, match=message) as caught:
        ProxyHeaderReader().receive_data(wire)
    assert caught.value.reply_hint is None  # nothing to answer: the connection is dropped


@pytest.mark.parametrize(("wire", "message"), MALFORMED)
def test_a_malformed_header_fed_byte_by_byte_is_refused_too(wire: bytes, message: str) -> None:
    reader = ProxyHeaderReader()
    with pytest.raises(ProxyHeaderError):
        for i in range(len(wire)):
            reader.receive_data(wire[i : i + 1])
        reader.receive_data(b"")  # a prefix that was still valid is now cut short


def test_a_reader_refuses_a_non_header_at_its_first_byte() -> None:
    # A client that skipped the load balancer is refused before it sends a second byte.
    with pytest.raises(ProxyHeaderError, match="0x05"):
        ProxyHeaderReader().receive_data(b"\x05")


def test_end_of_stream_before_any_byte_is_not_an_error() -> None:
    # A TCP health check: connect, close. Nothing to complain about.
    assert ProxyHeaderReader().receive_data(b"") is None


@pytest.mark.parametrize(
    "prefix", [b"P", b"PROXY TCP4 203.0.113.7", V2_SIGNATURE, v2(1, 0x11, ADDRESSES4)]
)
def test_end_of_stream_within_a_header_is_an_error(prefix: bytes) -> None:
    reader = ProxyHeaderReader()
    assert reader.receive_data(prefix) is None
    with pytest.raises(ProxyHeaderError, match=f"closed after {len(prefix)} bytes"):
        reader.receive_data(b"")


def test_a_reader_reads_one_header_only() -> None:
    reader = ProxyHeaderReader()
    assert reader.receive_data(b"PROXY UNKNOWN\r\n") is not None
    with pytest.raises(LocalProtocolError):
        reader.receive_data(b"PROXY UNKNOWN\r\n")


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"PROXY TCP4 203.0.113.7 192.0.2.10 51000 1080\r\n", True),
        (b"PROXY ", True),
        (V2_SIGNATURE + b"\x21", True),
        (b"PROXY", False),
        (V2_SIGNATURE[:11], False),
        (GREETING, False),
        (b"POST / HTTP/1.1\r\n", False),
    ],
)
def test_starts_like_header_knows_both_prefixes(data: bytes, expected: bool) -> None:
    assert starts_like_header(data) is expected


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=120).map(lambda b: b"PROXY " + b),
        st.binary(max_size=60).map(lambda b: V2_SIGNATURE + b),
        st.lists(
            st.sampled_from(
                [b"PROXY ", b"TCP4 ", b"TCP6 ", b"1", b"0", b" ", b"::", b".", b"\r\n", b"UNKNOWN"]
            ),
            max_size=20,
        ).map(b"".join),
    ),
    st.integers(min_value=1, max_value=64),
)
def test_random_bytes_raise_nothing_but_a_protocol_error(data: bytes, chunk: int) -> None:
    reader = ProxyHeaderReader()
    try:
        for start in range(0, len(data), chunk):
            header = reader.receive_data(data[start : start + chunk])
            if header is not None:
                # Whatever parses keeps every byte after the header for the client's stream.
                assert data[: start + chunk].endswith(header.trailing_data)
                if header.kind is HeaderKind.PROXY:
                    assert header.source is not None and header.destination is not None
                break
    except ProtocolError as error:
        assert isinstance(error, ProxyHeaderError)
