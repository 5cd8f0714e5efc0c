"""PROXY protocol v1/v2 header from the load balancer (HAProxy's proxy-protocol.txt), without I/O.

A load balancer that speaks the PROXY protocol sends one header before the client's own bytes,
naming the address the client connected from. ``ProxyHeaderReader`` takes the bytes as they
arrive and returns a ``ProxyHeader`` once the header is complete, with whatever followed it
(the client's SOCKS5 greeting, often in the same segment) as ``trailing_data``.

Section numbers below refer to proxy-protocol.txt.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from typing import Final

from socksauth.protocol.address import Address
from socksauth.protocol.errors import LocalProtocolError, RemoteProtocolError


class ProxyHeaderError(RemoteProtocolError):
    """The load balancer's bytes are not a valid PROXY protocol header; close without a reply
    (there is no SOCKS5 message to answer)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, None)


class HeaderKind(enum.Enum):
    """What the header says about the connection."""

    # Relayed on behalf of a client: ``source`` is the client, ``destination`` what it dialed.
    PROXY = "proxy"
    # v2 LOCAL: the load balancer connected on its own (a health check); the connection's
    # real endpoints stand.
    LOCAL = "local"
    # v1 UNKNOWN, or a v2 family/transport without addresses we use (AF_UNSPEC, AF_UNIX,
    # DGRAM): the connection's real endpoints stand.
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyHeader:
    """One parsed header; ``source``/``destination`` are set for HeaderKind.PROXY only."""

    version: int  # 1 (text) or 2 (binary)
    kind: HeaderKind
    source: Address | None = None
    destination: Address | None = None
    # Bytes received after the header: the start of the client's own stream.
    trailing_data: bytes = b""


V1_PREFIX: Final = b"PROXY "
V2_SIGNATURE: Final = b"\r\n\r\n\x00\r\nQUIT\n"

# §2.1: "The maximum line lengths the receiver must support including the CRLF are ...
# 107 chars" and "If the CRLF sequence is not found in the first 107 characters, the receiver
# should declare the line invalid."
V1_MAX_BYTES: Final = 107
_V2_FIXED_BYTES: Final = 16
# The v2 length field allows 65,535 bytes of addresses and TLVs. HAProxy with every TLV it
# knows (ALPN, authority, unique id, SSL version/CN/cipher/algorithms) stays far below 1 KiB;
# anything near this cap is not a load balancer we want to buffer for.
V2_MAX_BODY_BYTES: Final = 4096

_V2_VERSION: Final = 0x2
_V2_LOCAL: Final = 0x0
_V2_PROXY: Final = 0x1
_AF_UNSPEC, _AF_INET, _AF_INET6, _AF_UNIX = 0x0, 0x1, 0x2, 0x3
_TRANSPORT_UNSPEC, _STREAM, _DGRAM = 0x0, 0x1, 0x2
# Bytes of the address block per family (§2.2): 2*4 + 2*2, 2*16 + 2*2, 2*108.
_ADDRESS_BYTES: Final = {_AF_INET: 12, _AF_INET6: 36, _AF_UNIX: 216}


def starts_like_header(data: bytes | bytearray | memoryview) -> bool:
    """Whether ``data`` begins with a v1 or v2 PROXY header's fixed prefix: tells a load
    balancer that is not configured as one apart from a client that is not speaking SOCKS."""
    head = bytes(data[: len(V2_SIGNATURE)])
    return head.startswith(V1_PREFIX) or head == V2_SIGNATURE


class ProxyHeaderReader:
    """Collects the header's bytes until it is complete; a split header parses the same as a
    whole one. Everything received is kept until then, bounded by the longest valid header
    plus one read, so a peer cannot make it grow."""

    __slots__ = ("_data", "_done")

    def __init__(self) -> None:
        self._data = bytearray()
        self._done = False

    def receive_data(self, data: bytes | bytearray | memoryview) -> ProxyHeader | None:
        """Add bytes from the load balancer; None while the header is incomplete.

        b"" is the end of the stream: None if nothing came at all (a health check that
        connected and left), else the header is cut short.

        Raises:
            ProxyHeaderError: not a valid header; abort the connection (§2.1: "Any sequence
                which does not exactly match the protocol must be discarded and cause the
                receiver to abort the connection").
        """
        if self._done:
            raise LocalProtocolError("the PROXY header has already been read")
        if not data:
            if self._data:
                # §2.2: "The receiver must also reject incoming connections containing
                # partial protocol headers."
                raise ProxyHeaderError(
                    f"connection closed after {len(self._data)} bytes of a PROXY header"
                )
            return None
        self._data += data
        header = self._parse()
        if header is not None:
            self._done = True
            self._data = bytearray()
        return header

    def _parse(self) -> ProxyHeader | None:
        data = self._data
        # §2.2: a receiver that takes both versions tells them apart by the v2 signature and
        # the v1 "PROXY"; "otherwise the protocol is not covered by this specification and
        # the connection must be dropped". Checked on every byte so that a client that
        # skipped the load balancer is refused at once, not after a timeout.
        if data[:1] == V1_PREFIX[:1]:
            if data[: len(V1_PREFIX)] != V1_PREFIX[: len(data)]:
                raise ProxyHeaderError(f"not a PROXY header: {bytes(data[:6])!r}")
            return _parse_v1(data) if len(data) > len(V1_PREFIX) else None
        if data[:1] == V2_SIGNATURE[:1]:
            if data[: len(V2_SIGNATURE)] != V2_SIGNATURE[: len(data)]:
                raise ProxyHeaderError("not a PROXY header: the v2 signature does not match")
            return _parse_v2(data) if len(data) >= _V2_FIXED_BYTES else None
        raise ProxyHeaderError(
            f"no PROXY header: the first byte is {data[0]:#04x}, "
            "neither 'P' (version 1) nor the version 2 signature"
        )


# Version 1 (§2.1), one line of US-ASCII, fields separated by exactly one space:
#
#   +-------+---+-----------------+---+--------+---+--------+---+-------+---+-------+------+
#   | PROXY | _ | TCP4|TCP6|UNKNOWN| _ | src IP | _ | dst IP | _ | sport | _ | dport | \r\n |
#   +-------+---+-----------------+---+--------+---+--------+---+-------+---+-------+------+
#
# at most 107 bytes with the CRLF; after UNKNOWN anything up to the CRLF is ignored.


def _parse_v1(data: bytearray) -> ProxyHeader | None:
    window = bytes(data[:V1_MAX_BYTES])
    cr = window.find(b"\r")
    lf = window.find(b"\n")
    # §2.1: "The receiver must not tolerate a single CR or LF character to end the line
    # when a complete CRLF sequence is expected."
    if lf != -1 and (cr == -1 or lf < cr):
        raise ProxyHeaderError("PROXY v1 line ends with LF without CR")
    if cr == -1 or cr + 2 > V1_MAX_BYTES:
        if len(data) >= V1_MAX_BYTES:
            raise ProxyHeaderError(f"PROXY v1 line has no CRLF in its first {V1_MAX_BYTES} bytes")
        return None
    if cr + 1 == len(data):
        return None
    if data[cr + 1] != 0x0A:
        raise ProxyHeaderError("PROXY v1 line has a CR not followed by LF")
    trailing = bytes(data[cr + 2 :])
    try:
        line = window[:cr].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("PROXY v1 line is not US-ASCII") from None
    fields = line.split(" ")
    protocol = fields[1]
    if protocol == "UNKNOWN":
        # §2.1: "For "UNKNOWN", the rest of the line before the CRLF may be omitted by the
        # sender, and the receiver must ignore anything presented before the CRLF is found."
        return ProxyHeader(version=1, kind=HeaderKind.UNKNOWN, trailing_data=trailing)
    if protocol not in ("TCP4", "TCP6"):
        raise ProxyHeaderError(f"PROXY v1 protocol {protocol[:16]!r} is not TCP4, TCP6 or UNKNOWN")
    if len(fields) != 6:
        raise ProxyHeaderError(
            f"PROXY v1 {protocol} line has {len(fields)} fields separated by single spaces, not 6"
        )
    version = 4 if protocol == "TCP4" else 6
    source = _v1_host(fields[2], version, "source")
    destination = _v1_host(fields[3], version, "destination")
    return ProxyHeader(
        version=1,
        kind=HeaderKind.PROXY,
        source=Address.from_host(source, _v1_port(fields[4], "source")),
        destination=Address.from_host(destination, _v1_port(fields[5], "destination")),
        trailing_data=trailing,
    )


def _v1_host(text: str, version: int, which: str) -> str:
    # §2.1: IPv4 "as a series of exactly 4 integers in the range [0..255] ... Heading zeroes
    # are not permitted" (ipaddress refuses them too); "The advertised protocol family
    # dictates what format to use." A scope (%eth0) is no part of the format.
    try:
        if version == 4:
            return str(ipaddress.IPv4Address(text))
        if "%" not in text:
            return str(ipaddress.IPv6Address(text))
    except ValueError:
        pass
    raise ProxyHeaderError(f"PROXY v1 {which} address {text[:45]!r} is not an IPv{version} address")


def _v1_port(text: str, which: str) -> int:
    # §2.1: ports are "a decimal integer in the range [0..65535] inclusive. Heading zeroes
    # are not permitted in front of numbers".
    if (
        not 1 <= len(text) <= 5
        or not (text.isascii() and text.isdigit())
        or (text[0] == "0" and text != "0")
        or int(text) > 0xFFFF
    ):
        raise ProxyHeaderError(f"PROXY v1 {which} port {text[:8]!r} is not a port number")
    return int(text)


# Version 2 (§2.2), binary, network byte order:
#
#   +------------------------------------------+---------+---------+--------+-----------------+
#   | signature (12)                           | ver|cmd | fam|tr   | len (2)| len bytes:      |
#   | 0D 0A 0D 0A 00 0D 0A 51 55 49 54 0A      | 2 | 0/1 | 0-3|0-2  | uint16 | addresses, TLVs |
#   +------------------------------------------+---------+---------+--------+-----------------+
#
#   addresses, TCP/UDP over IPv4 (12):  src 4 | dst 4 | sport 2 | dport 2
#   addresses, TCP/UDP over IPv6 (36):  src 16 | dst 16 | sport 2 | dport 2
#   addresses, AF_UNIX (216):           src 108 | dst 108
#   then TLVs to the end of len:        type 1 | length 2 | value (length)


def _parse_v2(data: bytearray) -> ProxyHeader | None:
    version, command = data[12] >> 4, data[12] & 0x0F
    # §2.2: the version "must always be sent as \x2 and the receiver must only accept this
    # value"; commands other than LOCAL and PROXY: "Receivers must drop connections
    # presenting unexpected values here."
    if version != _V2_VERSION:
        raise ProxyHeaderError(f"PROXY v2 header has version {version}, not 2")
    if command not in (_V2_LOCAL, _V2_PROXY):
        raise ProxyHeaderError(f"PROXY v2 header has command {command:#x}, not LOCAL or PROXY")
    family, transport = data[13] >> 4, data[13] & 0x0F
    length = int.from_bytes(data[14:16], "big")
    if length > V2_MAX_BODY_BYTES:
        raise ProxyHeaderError(
            f"PROXY v2 header declares {length} bytes of addresses and TLVs; "
            f"at most {V2_MAX_BODY_BYTES} are accepted"
        )
    end = _V2_FIXED_BYTES + length
    if len(data) < end:
        # §2.2: "The receiver must not start to parse an address before the whole address
        # block is received."
        return None
    body = bytes(data[_V2_FIXED_BYTES:end])
    trailing = bytes(data[end:])
    if command == _V2_LOCAL:
        # §2.2: for LOCAL "The receiver must accept this connection as valid and must use
        # the real connection endpoints and discard the protocol block including the family
        # which is ignored." "Receivers MUST always consider this field to skip the
        # appropriate number of bytes and must not assume zero is presented for LOCAL".
        return ProxyHeader(version=2, kind=HeaderKind.LOCAL, trailing_data=trailing)
    # §2.2: other families and transports "must be rejected as invalid by receivers".
    if family > _AF_UNIX:
        raise ProxyHeaderError(f"PROXY v2 header has address family {family:#x}")
    if transport > _DGRAM:
        raise ProxyHeaderError(f"PROXY v2 header has transport protocol {transport:#x}")
    if family == _AF_UNSPEC or transport == _TRANSPORT_UNSPEC:
        # §2.2: UNSPEC: "The receiver should ignore address information."
        return ProxyHeader(version=2, kind=HeaderKind.UNKNOWN, trailing_data=trailing)
    needed = _ADDRESS_BYTES[family]
    if length < needed:
        raise ProxyHeaderError(
            f"PROXY v2 header has {length} bytes of addresses, family {family:#x} needs {needed}"
        )
    _check_tlvs(body, needed)
    if family == _AF_UNIX or transport == _DGRAM:
        # §2.2: "A receiver is not required to implement other ones, provided that it
        # automatically falls back to the UNSPEC mode for the valid combinations above that
        # it does not support." A UNIX path or a UDP flow says nothing about a TCP client.
        return ProxyHeader(version=2, kind=HeaderKind.UNKNOWN, trailing_data=trailing)
    size = 4 if family == _AF_INET else 16
    ports = 2 * size
    source = ipaddress.ip_address(body[:size])
    destination = ipaddress.ip_address(body[size:ports])
    return ProxyHeader(
        version=2,
        kind=HeaderKind.PROXY,
        source=Address.from_host(str(source), int.from_bytes(body[ports : ports + 2], "big")),
        destination=Address.from_host(
            str(destination), int.from_bytes(body[ports + 2 : ports + 4], "big")
        ),
        trailing_data=trailing,
    )


def _check_tlvs(body: bytes, start: int) -> None:
    """TLVs are skipped, not interpreted (§2.2: "A receiver may choose to skip over and
    ignore the TLVs it is not interested in"), but they must tile the rest of the block: a
    TLV that runs past the header's length means the header is not what it claims."""
    offset = start
    while offset < len(body):
        remaining = len(body) - offset
        if remaining < 3:
            raise ProxyHeaderError(
                f"PROXY v2 TLV at byte {_V2_FIXED_BYTES + offset} is cut short: "
                f"{remaining} of its 3 type and length bytes"
            )
        value_bytes = int.from_bytes(body[offset + 1 : offset + 3], "big")
        if value_bytes > remaining - 3:
            raise ProxyHeaderError(
                f"PROXY v2 TLV {body[offset]:#04x} at byte {_V2_FIXED_BYTES + offset} declares "
                f"{value_bytes} bytes, {remaining - 3} remain"
            )
        offset += 3 + value_bytes
