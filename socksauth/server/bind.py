"""BIND: listen on a fresh port and accept the one inbound connection the client expects;
``BindCommand`` answers the request with its two replies."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
from collections.abc import Awaitable
from typing import TYPE_CHECKING

from socksauth.connection_record import ConnectionRecord, Outcome
from socksauth.logs import get_logger
from socksauth.protocol import Address, AddressType, Command, Reply
from socksauth.server.outbound import reply_for_error
from socksauth.server.udp import normalise_host

if TYPE_CHECKING:
    from socksauth.server.client_parts import ClientParts

log = get_logger("bind")
# The BIND handler logs as the client connection it serves.
client_log = get_logger("client")

# struct linger {l_onoff = 1, l_linger = 0}: close() sends RST instead of FIN.
_LINGER_RESET = struct.pack("ii", 1, 0)


async def expected_peers(requested: Address) -> frozenset[str] | None:
    """The IPs the inbound connection may come from, or None when any peer is accepted.

    RFC 1928 §4 leaves it to the server how DST.ADDR is used "in evaluating the BIND
    request"; as SOCKS4 does, we accept the inbound connection only from that address. The
    port is not checked: the peer connects from a port of its own choosing. An all-zeros
    address means the client does not know the peer. A domain name is resolved; raises
    socket.gaierror when it does not resolve.
    """
    if requested.type is AddressType.DOMAINNAME:
        infos = await asyncio.get_running_loop().getaddrinfo(
            requested.host, None, type=socket.SOCK_STREAM
        )
        return frozenset(normalise_host(str(info[4][0])) for info in infos)
    if ipaddress.ip_address(requested.host).is_unspecified:
        return None
    return frozenset({normalise_host(requested.host)})


class Binding:
    """The listening socket of one BIND; closed by ``close`` (or ``with``)."""

    def __init__(self, local_host: str) -> None:
        """Listen on ``local_host`` (the control connection's local address), port 0.

        Raises OSError for reply_for_error when the address cannot be bound.
        """
        host = normalise_host(local_host)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.bind((host, 0))
            # One connection is wanted; a small backlog still lets an unexpected peer's
            # connection be accepted and refused without holding up the expected one.
            sock.listen(4)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        bound = sock.getsockname()
        self.address = Address.from_host(normalise_host(bound[0]), bound[1])
        self.refused = 0

    async def accept(
        self, expected: frozenset[str] | None, client_gone: Awaitable[None]
    ) -> socket.socket | None:
        """The first inbound connection from an expected peer; None if the client left first.

        A connection from any other address is closed at once and we keep waiting, so a
        stray connection (a port scan) cannot spoil the binding; the caller bounds the wait.
        """
        loop = asyncio.get_running_loop()
        gone = asyncio.ensure_future(client_gone)
        try:
            while True:
                accepting = loop.create_task(loop.sock_accept(self._sock))
                try:
                    await asyncio.wait({accepting, gone}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    if not accepting.done():
                        accepting.cancel()
                        await asyncio.gather(accepting, return_exceptions=True)
                if gone.done():
                    if not accepting.cancelled() and accepting.exception() is None:
                        accepting.result()[0].close()
                    gone.result()  # raises if watching the client failed (protocol error)
                    return None
                peer_sock, peer = accepting.result()  # raises what accept() raised
                host = normalise_host(peer[0])
                if expected is None or host in expected:
                    return peer_sock
                self.refused += 1
                log.info("BIND on %s: refused a connection from %s", self.address, host)
                # RST rather than FIN: the peer learns at once that it was not accepted.
                peer_sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                peer_sock.close()
        finally:
            if not gone.done():
                gone.cancel()
                await asyncio.gather(gone, return_exceptions=True)

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> Binding:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class BindCommand:
    """The BIND request (RFC 1928 §6), a part of ClientConnection."""

    async def _bind(
        self: ClientParts,
        transport: asyncio.Transport,
        requested: Address,
        record: ConnectionRecord,
    ) -> None:
        """RFC 1928 §6 BIND: listen, first reply, accept the expected peer, second reply, relay."""
        try:
            async with asyncio.timeout(self._settings.connect_timeout_seconds):
                expected = await expected_peers(requested)
            if expected is not None and requested.type is AddressType.DOMAINNAME:
                expected = frozenset(
                    ip
                    for ip in expected
                    if self._allows(Command.BIND, requested.host, ip, requested.port)
                )
                if not expected:
                    self._deny(transport, record, self._denial)
                    return
            binding = Binding(transport.get_extra_info("sockname")[0])
        except (OSError, UnicodeError) as error:  # gaierror, timeout, EADDRNOTAVAIL, bad name
            reply = reply_for_error(error)
            client_log.info(
                "%s: BIND %s failed: %s (%s)", record.client, requested, reply.name, error
            )
            self._reply(transport, reply, record)
            record.outcome = Outcome.BIND_FAILED
            return
        with binding:
            # RFC 1928 §6: "The first is sent after the server creates and binds a new socket."
            self._reply(transport, Reply.SUCCEEDED, record, binding.address)
            try:
                async with asyncio.timeout(self._settings.bind_timeout_seconds):
                    sock = await binding.accept(expected, self._client_gone())
            except TimeoutError:
                # Nobody (expected) connected in time: "TTL expired", as for a CONNECT that
                # timed out (reply_for_error).
                client_log.info(
                    "%s: BIND %s: no connection in time", record.client, binding.address
                )
                self._reply(transport, Reply.TTL_EXPIRED, record)
                record.outcome = Outcome.BIND_FAILED
                return
        if sock is None:
            record.outcome = Outcome.CLIENT_GONE
            return
        # "The second reply occurs only after the anticipated incoming connection succeeds".
        await self._tunnel(transport, sock, record, reply_with_peer=True)

    async def _client_gone(self: ClientParts) -> None:
        """Returns once the client closes (EOF counts: a client that stops sending before
        the second BIND reply has given up); bytes it sends meanwhile are kept for the
        tunnel (trailing data), as are bytes pipelined after the request."""
        while not (self.protocol.lost or self.protocol.eof):
            await self.protocol.wait_for_data()
