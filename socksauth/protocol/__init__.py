"""Sans-IO SOCKS5 (RFC 1928) and username/password (RFC 1929): bytes in, events out.

Standard library only: no sockets, no asyncio, no clock.
"""

from __future__ import annotations

from socksauth.protocol.address import Address
from socksauth.protocol.codes import AddressType, AuthMethod, AuthStatus, Command, Reply
from socksauth.protocol.connection import (
    NEED_DATA,
    PAUSED,
    ServerConnection,
    State,
    select_method,
)
from socksauth.protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from socksauth.protocol.events import (
    AuthReply,
    CommandReply,
    CommandRequest,
    ConnectionClosed,
    Credentials,
    Greeting,
    MethodSelection,
)
from socksauth.protocol.proxy_header import (
    HeaderKind,
    ProxyHeader,
    ProxyHeaderError,
    ProxyHeaderReader,
)
from socksauth.protocol.udp import UdpHeader, build_datagram, parse_datagram

__all__ = [
    "NEED_DATA",
    "PAUSED",
    "Address",
    "AddressType",
    "AuthMethod",
    "AuthReply",
    "AuthStatus",
    "Command",
    "CommandReply",
    "CommandRequest",
    "ConnectionClosed",
    "Credentials",
    "Greeting",
    "HeaderKind",
    "LocalProtocolError",
    "MethodSelection",
    "ProtocolError",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxyHeaderReader",
    "RemoteProtocolError",
    "Reply",
    "ServerConnection",
    "State",
    "UdpHeader",
    "build_datagram",
    "parse_datagram",
    "select_method",
]
