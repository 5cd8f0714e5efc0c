"""Address: classification of hosts, the ATYP/address/port wire encoding, and its parser."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from protocol_strategies import addresses, ports

from socksauth.protocol import Address, AddressType, RemoteProtocolError
from socksauth.protocol.address import take_address
from socksauth.protocol.buffer import ReceiveBuffer

BOUNDED = settings(max_examples=200, deadline=None)


@pytest.mark.parametrize(
    ("host", "expected_type", "expected_host"),
    [
        ("192.0.2.1", AddressType.IPV4, "192.0.2.1"),
        ("0.0.0.0", AddressType.IPV4, "0.0.0.0"),
        ("2001:db8::1", AddressType.IPV6, "2001:db8::1"),
        ("2001:0DB8:0000:0000:0000:0000:0000:0001", AddressType.IPV6, "2001:db8::1"),
        ("::1", AddressType.IPV6, "::1"),
        ("example.com", AddressType.DOMAINNAME, "example.com"),
        ("bücher.example", AddressType.DOMAINNAME, "bücher.example"),
        ("localhost", AddressType.DOMAINNAME, "localhost"),
        ("1.2.3", AddressType.DOMAINNAME, "1.2.3"),
    ],
)
def test_from_host_classifies_and_normalises_the_host(
    host: str, expected_type: AddressType, expected_host: str
) -> None:
    address = Address.from_host(host, 1080)
    assert (address.type, address.host, address.port) == (expected_type, expected_host, 1080)


@pytest.mark.parametrize(
    ("address", "wire"),
    [
        (Address.from_host("192.0.2.1", 80), b"\x01\xc0\x00\x02\x01\x00\x50"),
        (Address.from_host("::1", 443), b"\x04" + b"\x00" * 15 + b"\x01" + b"\x01\xbb"),
        (Address.from_host("example.com", 8080), b"\x03\x0bexample.com\x1f\x90"),
        (
            Address.from_host("bücher.example", 65535),
            b"\x03\x0fb\xc3\xbccher.example\xff\xff",
        ),
        (Address.unspecified(), b"\x01\x00\x00\x00\x00\x00\x00"),
    ],
    ids=["ipv4", "ipv6", "domain", "non-ascii-domain-as-utf8", "unspecified"],
)
def test_encode_writes_atyp_address_and_big_endian_port(address: Address, wire: bytes) -> None:
    assert address.encode() == wire


@pytest.mark.parametrize(
    ("address_type", "host", "port"),
    [
        (AddressType.IPV4, "192.0.2.1", -1),
        (AddressType.IPV4, "192.0.2.1", 65536),
        (AddressType.DOMAINNAME, "", 80),
        (AddressType.DOMAINNAME, "a" * 256, 80),
        (AddressType.DOMAINNAME, "é" * 128, 80),
        (AddressType.IPV4, "2001:db8::1", 80),
        (AddressType.IPV6, "192.0.2.1", 80),
        (AddressType.IPV4, "example.com", 80),
    ],
    ids=[
        "negative-port",
        "port-too-big",
        "empty-domain",
        "domain-256-bytes",
        "non-ascii-domain-256-bytes",
        "ipv6-host-as-ipv4",
        "ipv4-host-as-ipv6",
        "name-as-ipv4",
    ],
)
def test_address_rejects_values_the_wire_cannot_carry(
    address_type: AddressType, host: str, port: int
) -> None:
    with pytest.raises(ValueError):
        Address(address_type, host, port)


def test_a_domain_of_exactly_255_bytes_is_accepted() -> None:
    wire = Address(AddressType.DOMAINNAME, "a" * 255, 1).encode()
    assert wire[:2] == b"\x03\xff"
    assert len(wire) == 1 + 1 + 255 + 2


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (Address.from_host("192.0.2.1", 80), "192.0.2.1:80"),
        (Address.from_host("2001:db8::1", 443), "[2001:db8::1]:443"),
        (Address.from_host("example.com", 8080), "example.com:8080"),
    ],
)
def test_str_brackets_ipv6_hosts_only(address: Address, text: str) -> None:
    assert str(address) == text


@BOUNDED
@given(addresses, st.binary(max_size=8))
def test_take_address_reads_back_what_encode_wrote_and_stops_there(
    address: Address, rest: bytes
) -> None:
    buffer = ReceiveBuffer(4096)
    buffer.feed(address.encode() + rest)
    assert take_address(buffer, None) == address
    buffer.commit()
    assert buffer.take_all() == rest


@BOUNDED
@given(addresses)
def test_take_address_needs_every_byte_of_the_address(address: Address) -> None:
    wire = address.encode()
    for end in range(len(wire)):
        buffer = ReceiveBuffer(4096)
        buffer.feed(wire[:end])
        assert take_address(buffer, None) is None


@BOUNDED
@given(st.ip_addresses(), ports)
def test_from_host_of_any_ip_literal_gives_an_ip_address_type(ip: object, port: int) -> None:
    address = Address.from_host(str(ip), port)
    expected = AddressType.IPV4 if ":" not in str(ip) else AddressType.IPV6
    assert address.type is expected
    assert address.host == str(ip)


@pytest.mark.parametrize(
    ("wire", "message"),
    [
        (b"\x02\x7f\x00\x00\x01\x00\x50", "unknown address type 0x02"),
        (b"\x05\x7f\x00\x00\x01\x00\x50", "unknown address type 0x05"),
        (b"\x03\x00\x00\x50", "empty domain name"),
    ],
)
def test_take_address_raises_with_the_given_hint_for_unparseable_addresses(
    wire: bytes, message: str
) -> None:
    buffer = ReceiveBuffer(4096)
    buffer.feed(wire)
    with pytest.raises(RemoteProtocolError, match=message) as caught:
        take_address(buffer, b"hint")
    assert caught.value.reply_hint == b"hint"
