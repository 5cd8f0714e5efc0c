"""Address: an IPv4 address, IPv6 address or domain name with a port, and its wire encoding."""

from __future__ import annotations

import functools
import ipaddress
import struct
from dataclasses import dataclass

from socksauth.protocol.buffer import ReceiveBuffer
from socksauth.protocol.codes import AddressType
from socksauth.protocol.errors import RemoteProtocolError

_PORT = struct.Struct("!H")

# Distinct strings remembered by ip_literal: a busy host's few client and target addresses
# stay parsed; a flood of names only evicts (each entry is ~200 bytes).
_PARSED_CACHE_SIZE = 4096


@functools.lru_cache(maxsize=_PARSED_CACHE_SIZE)
def ip_literal(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """``text`` as an IP address, or None when it is not an IP literal (a domain name).

    Cached: ipaddress parses in Python (~4 µs), and one connection asks about its client's and
    its target's address several times (admission, policy, audit, reply); the answer for a
    string never changes.
    """
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Address:
    """A SOCKS5 address: ``host`` is an IP literal (type IPV4/IPV6) or a domain name."""

    type: AddressType
    host: str
    port: int

    def __post_init__(self) -> None:
        if not 0 <= self.port <= 0xFFFF:
            raise ValueError(f"port {self.port} is out of range 0-65535")
        if self.type is AddressType.DOMAINNAME:
            if not 1 <= len(self.host.encode("utf-8", "surrogateescape")) <= 255:
                raise ValueError("a domain name is 1 to 255 bytes long")
        else:
            parsed = ip_literal(self.host)
            if parsed is None:
                raise ValueError(f"{self.host!r} is not an {self.type.name} address")
            expected = AddressType.IPV4 if parsed.version == 4 else AddressType.IPV6
            if expected is not self.type:
                raise ValueError(f"{self.host!r} is not an {self.type.name} address")

    @classmethod
    def from_host(cls, host: str, port: int) -> Address:
        """Classify ``host`` as IPv4, IPv6 or domain name."""
        parsed = ip_literal(host)
        if parsed is None:
            return cls(AddressType.DOMAINNAME, host, port)
        kind = AddressType.IPV4 if parsed.version == 4 else AddressType.IPV6
        return cls(kind, str(parsed), port)

    @classmethod
    def unspecified(cls) -> Address:
        """0.0.0.0:0, what a failure reply carries (RFC 1928 leaves BND fields open then)."""
        return cls(AddressType.IPV4, "0.0.0.0", 0)

    def encode(self) -> bytes:
        """ATYP, address and port as they appear in requests, replies and UDP headers."""
        if self.type is AddressType.DOMAINNAME:
            name = self.host.encode("utf-8", "surrogateescape")
            body = bytes((len(name),)) + name
        else:
            parsed = ip_literal(self.host)
            assert parsed is not None  # checked when the Address was made
            body = parsed.packed
        return bytes((self.type,)) + body + _PORT.pack(self.port)

    def __str__(self) -> str:
        if self.type is AddressType.IPV6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


def take_address(buffer: ReceiveBuffer, unsupported_hint: bytes | None) -> Address | None:
    """Parse ATYP, address and port from ``buffer``, or None when more bytes are needed.

    An unknown ATYP raises RemoteProtocolError with ``unsupported_hint``: without a known type
    the address length is unknown, so nothing after it can be parsed.
    """
    atyp = buffer.take(1)
    if atyp is None:
        return None
    kind = atyp[0]
    if kind == AddressType.IPV4:
        raw = buffer.take(4)
        if raw is None:
            return None
        host = str(ipaddress.IPv4Address(raw))
    elif kind == AddressType.IPV6:
        raw = buffer.take(16)
        if raw is None:
            return None
        host = str(ipaddress.IPv6Address(raw))
    elif kind == AddressType.DOMAINNAME:
        length = buffer.take(1)
        if length is None:
            return None
        if length[0] == 0:
            raise RemoteProtocolError("empty domain name", unsupported_hint)
        raw = buffer.take(length[0])
        if raw is None:
            return None
        # Undecodable bytes are kept (surrogateescape) so they round-trip; such a name
        # simply fails to resolve.
        host = raw.decode("utf-8", "surrogateescape")
    else:
        raise RemoteProtocolError(f"unknown address type {kind:#04x}", unsupported_hint)
    port = buffer.take(2)
    if port is None:
        return None
    return Address(AddressType(kind), host, _PORT.unpack(port)[0])
