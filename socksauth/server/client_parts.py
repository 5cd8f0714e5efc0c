"""ClientParts: what the parts of a client connection use of one another.

``ClientConnection`` (server/client.py) is made of classes it inherits, one per concept: the
SOCKS5 handshake (socks5_login.py), the HTTP proxy's entry (http_entry.py) and the CONNECT,
BIND and UDP ASSOCIATE handlers (connect.py, bind.py, udp.py). Their methods are typed
``self: ClientParts``: this one Protocol names every attribute and method a part reaches on
the whole, so mypy checks each part against the connection it will be part of, and a part
needs no import of another (or of client.py) at run time.
"""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from socksauth.auth.authenticator import Authenticator, LoginResult
    from socksauth.config import Settings
    from socksauth.connection_record import ConnectionRecord
    from socksauth.protocol import (
        Address,
        Command,
        CommandRequest,
        Credentials,
        Reply,
        ServerConnection,
    )
    from socksauth.protocol.events import ClientEvent
    from socksauth.protocol.http import ProxyRequest
    from socksauth.server.access import Access
    from socksauth.server.egress import Egress
    from socksauth.server.handshake import HandshakeProtocol
    from socksauth.server.http import HttpExchange
    from socksauth.server.limits import ClientSlot
    from socksauth.server.outbound import Dialer
    from socksauth.server.policy import Verdict
    from socksauth.server.relay import Relay
    from socksauth.server.udp import UdpAssociation
    from socksauth.store.interfaces import UserRecord


class ClientParts(Protocol):
    """The client connection as its parts see it."""

    _settings: Settings
    _authenticator: Authenticator
    _access: Access
    _dialer: Dialer
    _conn: ServerConnection
    _denial: Verdict | None
    _slot: ClientSlot | None
    _session: str | None
    _load_balancer_check: bool
    _transport: asyncio.Transport | None
    _http: HttpExchange | None
    _login: Credentials | None
    protocol: HandshakeProtocol
    user: UserRecord | None
    record: ConnectionRecord | None
    relay: Relay | None
    association: UdpAssociation | None

    # -- client.py: admission, the checks every request passes, the reply --------------
    async def _dispatch(
        self, transport: asyncio.Transport, request: CommandRequest, record: ConnectionRecord
    ) -> None: ...

    async def _admit_request(
        self, transport: asyncio.Transport, request: CommandRequest, record: ConnectionRecord
    ) -> bool: ...

    def _request_verdict(self, command: Command, target: Address) -> Verdict | None: ...

    def _allows(self, command: Command, name: str | None, ip: str, port: int) -> bool: ...

    def _datagram_allowed(self, target: Address) -> bool: ...

    def _resolved_datagram_allowed(self, name: str, ip: str, port: int) -> bool: ...

    def _egress(self) -> Egress | None: ...

    def _reply(
        self,
        transport: asyncio.Transport,
        reply: Reply,
        record: ConnectionRecord,
        bound: Address | None = None,
    ) -> None: ...

    def _deny(
        self, transport: asyncio.Transport, record: ConnectionRecord, verdict: Verdict | None
    ) -> None: ...

    async def _client_gone(self) -> None: ...

    # -- socks5_login.py and http_entry.py ---------------------------------------------
    async def _next_event(self) -> ClientEvent: ...

    def _login_refused(
        self, record: ConnectionRecord, account: str, result: LoginResult
    ) -> None: ...

    def _same_login(self, request: ProxyRequest) -> bool: ...

    async def _open_origin(self, target: Address) -> socket.socket | None: ...

    # -- connect.py: the relay, also BIND's --------------------------------------------
    async def _tunnel(
        self,
        transport: asyncio.Transport,
        sock: socket.socket,
        record: ConnectionRecord,
        *,
        reply_with_peer: bool,
    ) -> None: ...

    def _new_relay(self) -> Relay: ...

    def _relay_tunnel(
        self,
        transport: asyncio.Transport,
        relay: Relay,
        target_transport: asyncio.Transport,
        record: ConnectionRecord,
        *,
        reply_with_peer: bool,
    ) -> None: ...
