"""The UDP ASSOCIATE datagram header (RFC 1928 §7)."""

from __future__ import annotations

from dataclasses import dataclass

from socksauth.protocol.address import Address, take_address
from socksauth.protocol.buffer import ReceiveBuffer
from socksauth.protocol.errors import RemoteProtocolError

# A datagram is at most 64 KiB; the header is at most 2 + 1 + 1 + 1 + 255 + 2 bytes.
_MAX_DATAGRAM_BYTES = 65535


@dataclass(frozen=True, slots=True)
class UdpHeader:
    """RFC 1928 §7: each UDP datagram carries this header.

    +----+------+------+----------+----------+----------+
    |RSV | FRAG | ATYP | DST.ADDR | DST.PORT |   DATA   |
    +----+------+------+----------+----------+----------+
    | 2  |  1   |  1   | Variable |    2     | Variable |
    +----+------+------+----------+----------+----------+
    """

    fragment: int
    address: Address

    def encode(self) -> bytes:
        if not 0 <= self.fragment <= 0xFF:
            raise ValueError(f"fragment number {self.fragment} is out of range 0-255")
        return bytes((0, 0, self.fragment)) + self.address.encode()


def parse_datagram(datagram: bytes | bytearray | memoryview) -> tuple[UdpHeader, bytes]:
    """Split a client datagram into its header and payload; RemoteProtocolError if malformed.

    A datagram arrives whole or not at all, so unlike the stream messages an incomplete
    header is an error, not a reason to wait.
    """
    if len(datagram) > _MAX_DATAGRAM_BYTES:
        raise RemoteProtocolError("datagram longer than 65535 bytes")
    buffer = ReceiveBuffer(_MAX_DATAGRAM_BYTES)
    buffer.feed(datagram)
    head = buffer.take(3)
    if head is None:
        raise RemoteProtocolError("datagram shorter than its header")
    if head[0] or head[1]:
        raise RemoteProtocolError("datagram RSV field is not X'0000'")
    address = take_address(buffer, None)
    if address is None:
        raise RemoteProtocolError("datagram shorter than its header")
    buffer.commit()
    return UdpHeader(head[2], address), buffer.take_all()


def build_datagram(address: Address, payload: bytes | bytearray | memoryview) -> bytes:
    """A datagram from ``address`` to the client: header with FRAG 0, then the payload."""
    return UdpHeader(0, address).encode() + bytes(payload)
