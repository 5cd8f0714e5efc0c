"""The UDP ASSOCIATE datagram header (RFC 1928 §7): build, parse, reject malformed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_strategies import addresses

from socksauth.protocol import (
    Address,
    RemoteProtocolError,
    UdpHeader,
    build_datagram,
    parse_datagram,
)

BOUNDED = settings(max_examples=200, deadline=None)


@pytest.mark.parametrize(
    ("datagram", "header", "payload"),
    [
        (
            b"\x00\x00\x00\x01\xc0\x00\x02\x01\x00\x35query",
            UdpHeader(0, Address.from_host("192.0.2.1", 53)),
            b"query",
        ),
        (
            b"\x00\x00\x00\x04" + b"\x00" * 15 + b"\x01\x01\xbb",
            UdpHeader(0, Address.from_host("::1", 443)),
            b"",
        ),
        (
            b"\x00\x00\x00\x03\x0bexample.com\x00\x35\x00\xff",
            UdpHeader(0, Address.from_host("example.com", 53)),
            b"\x00\xff",
        ),
        (
            b"\x00\x00\x07\x01\xc0\x00\x02\x01\x00\x35x",
            UdpHeader(7, Address.from_host("192.0.2.1", 53)),
            b"x",
        ),
    ],
    ids=["ipv4-with-payload", "ipv6-empty-payload", "domain-binary-payload", "fragment-7"],
)
def test_parse_datagram_splits_header_and_payload(
    datagram: bytes, header: UdpHeader, payload: bytes
) -> None:
    assert parse_datagram(datagram) == (header, payload)
    assert parse_datagram(bytearray(datagram)) == (header, payload)
    assert parse_datagram(memoryview(datagram)) == (header, payload)


def test_build_datagram_writes_a_zero_rsv_and_frag_header_before_the_payload() -> None:
    address = Address.from_host("198.51.100.7", 5353)
    assert build_datagram(address, b"answer") == b"\x00\x00\x00\x01\xc6\x33\x64\x07\x14\xe9answer"


@pytest.mark.parametrize(
    "datagram",
    [
        b"",
        b"\x00",
        b"\x00\x00",
        b"\x00\x00\x00",
        b"\x00\x01\x00\x01\xc0\x00\x02\x01\x00\x35",
        b"\x01\x00\x00\x01\xc0\x00\x02\x01\x00\x35",
        b"\x00\x00\x00\x02\xc0\x00\x02\x01\x00\x35",
        b"\x00\x00\x00\x01\xc0\x00\x02",
        b"\x00\x00\x00\x01\xc0\x00\x02\x01\x00",
        b"\x00\x00\x00\x04" + b"\x00" * 17,
        b"\x00\x00\x00\x03\x0bexample",
        b"\x00\x00\x00\x03\x00\x00\x35",
        b"\x00\x00\x00\x01\xc0\x00\x02\x01\x00\x35" + b"x" * 65526,
    ],
    ids=[
        "empty",
        "one-byte",
        "rsv-only",
        "no-address",
        "rsv-low-byte-set",
        "rsv-high-byte-set",
        "unknown-atyp",
        "truncated-ipv4",
        "truncated-port",
        "truncated-ipv6",
        "truncated-domain",
        "empty-domain",
        "longer-than-65535",
    ],
)
def test_parse_datagram_rejects_malformed_datagrams(datagram: bytes) -> None:
    with pytest.raises(RemoteProtocolError):
        parse_datagram(datagram)


def test_parse_datagram_accepts_exactly_65535_bytes() -> None:
    header = b"\x00\x00\x00\x01\xc0\x00\x02\x01\x00\x35"
    _, payload = parse_datagram(header + b"x" * (65535 - len(header)))
    assert len(payload) == 65535 - len(header)


@pytest.mark.parametrize("fragment", [-1, 256])
def test_udp_header_refuses_fragment_numbers_outside_one_byte(fragment: int) -> None:
    with pytest.raises(ValueError, match="fragment"):
        UdpHeader(fragment, Address.unspecified()).encode()


@BOUNDED
@given(addresses, st.binary(max_size=64))
def test_parse_datagram_of_build_datagram_gives_back_address_and_payload(
    address: Address, payload: bytes
) -> None:
    assert parse_datagram(build_datagram(address, payload)) == (UdpHeader(0, address), payload)


@BOUNDED
@given(st.integers(0, 255), addresses, st.binary(max_size=64))
def test_parse_datagram_of_an_encoded_header_keeps_the_fragment_number(
    fragment: int, address: Address, payload: bytes
) -> None:
    header = UdpHeader(fragment, address)
    assert parse_datagram(header.encode() + payload) == (header, payload)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.binary(max_size=40).map(lambda b: b"\x00\x00" + b)))
def test_parse_datagram_of_random_bytes_raises_only_remote_protocol_error(
    datagram: bytes,
) -> None:
    try:
        header, payload = parse_datagram(datagram)
    except RemoteProtocolError as error:
        assert error.reply_hint is None  # UDP has no reply: a bad datagram is dropped
    else:
        # Whatever parses is the datagram's exact split.
        assert header.encode() + payload == datagram
