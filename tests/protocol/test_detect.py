"""detect(): the first byte tells SOCKS5 from an HTTP proxy client; anything else is neither."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from socksauth.protocol.detect import Kind, detect


@pytest.mark.parametrize(
    ("first", "kind"),
    [
        (0x05, Kind.SOCKS5),
        (ord("C"), Kind.HTTP),  # CONNECT
        (ord("G"), Kind.HTTP),  # GET
        (ord("P"), Kind.HTTP),  # POST, PUT, PATCH (and "PROXY", which the server routes back)
        (ord("O"), Kind.HTTP),  # OPTIONS
        (0x04, Kind.UNKNOWN),  # SOCKS4
        (0x16, Kind.UNKNOWN),  # a TLS ClientHello
        (ord("g"), Kind.UNKNOWN),  # methods are case-sensitive, and upper-case
        (ord("\r"), Kind.UNKNOWN),  # a PROXY v2 signature, or a stray CRLF
        (0x00, Kind.UNKNOWN),
    ],
)
def test_the_first_byte_decides_the_protocol(first: int, kind: Kind) -> None:
    assert detect(first) is kind


@given(st.integers(min_value=0, max_value=255))
def test_every_byte_is_exactly_one_kind(first: int) -> None:
    kind = detect(first)
    assert (kind is Kind.SOCKS5) == (first == 5)
    assert (kind is Kind.HTTP) == (ord("A") <= first <= ord("Z"))
