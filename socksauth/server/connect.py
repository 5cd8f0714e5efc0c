"""CONNECT: dial the target, reply with the address used, then hand both to a relay (the
tunnel; BIND's second reply hands its peer to one the same way)."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

from socksauth.connection_record import ConnectionRecord, Outcome
from socksauth.logs import get_logger
from socksauth.protocol import Address, AddressType, Command, Reply
from socksauth.server.outbound import (
    NotAllowed,
    ResolvedAddress,
    has_egress_failure,
    reply_for_error,
    transport_on,
)
from socksauth.server.relay import Relay
from socksauth.server.udp import normalise_host

if TYPE_CHECKING:
    from socksauth.server.client_parts import ClientParts

# The handlers log as the client connection they serve.
client_log = get_logger("client")


class ConnectCommand:
    """CONNECT and the tunnel, a part of ClientConnection."""

    relay: Relay | None

    async def _connect(
        self: ClientParts, transport: asyncio.Transport, target: Address, record: ConnectionRecord
    ) -> None:
        name = target.host if target.type is AddressType.DOMAINNAME else None

        def allow(resolved: ResolvedAddress) -> bool:
            return self._allows(
                Command.CONNECT, name, str(resolved.sockaddr[0]), resolved.sockaddr[1]
            )

        egress = self._egress()
        relay = self._new_relay()
        try:
            target_transport = await self._dialer.open(
                target,
                lambda: relay.target_protocol,
                allow,
                None if egress is None else egress.source_for,
            )
        except NotAllowed:
            self._deny(transport, record, self._denial)
            return
        except OSError as error:  # TimeoutError and socket.gaierror are OSErrors too
            reply = reply_for_error(error)
            if has_egress_failure(error):
                client_log.warning("%s: CONNECT %s: %s", record.client, target, error)
            client_log.info(
                "%s: CONNECT %s failed: %s (%s)", record.client, target, reply.name, error
            )
            self._reply(transport, reply, record)
            record.outcome = Outcome.CONNECT_FAILED
            return
        self._relay_tunnel(transport, relay, target_transport, record, reply_with_peer=False)

    def _new_relay(self: ClientParts) -> Relay:
        return Relay(
            self._settings.relay_buffer_bytes,
            buckets=self._access.bandwidth.buckets(self.user),
            idle_timeout_seconds=self._settings.idle_timeout_seconds,
            budget=self._access.relay_budget,
        )

    async def _tunnel(
        self: ClientParts,
        transport: asyncio.Transport,
        sock: socket.socket,
        record: ConnectionRecord,
        *,
        reply_with_peer: bool,
    ) -> None:
        """Reply success, then hand the client and ``sock`` (BIND's peer) to a relay; run()
        waits for it to end."""
        relay = self._new_relay()
        target_transport = await transport_on(sock, lambda: relay.target_protocol)
        self._relay_tunnel(
            transport,
            relay,
            target_transport,
            record,
            reply_with_peer=reply_with_peer,
        )

    def _relay_tunnel(
        self: ClientParts,
        transport: asyncio.Transport,
        relay: Relay,
        target_transport: asyncio.Transport,
        record: ConnectionRecord,
        *,
        reply_with_peer: bool,
    ) -> None:
        """Reply success, then hand the client and the target (or BIND's peer), whose
        transport already reads into ``relay``, to it; run() waits for it to end."""
        # Nothing from the target reaches the client before the success reply: the relay
        # holds the target's reading (and any early bytes) until attach_client.
        bound = target_transport.get_extra_info("sockname")
        peer = target_transport.get_extra_info("peername")
        record.dialed = str(Address.from_host(peer[0], peer[1]))
        if reply_with_peer:
            # RFC 1928 §6: in the second BIND reply "the BND.PORT and BND.ADDR fields contain
            # the address and port number of the connecting host".
            reply_address = Address.from_host(normalise_host(peer[0]), peer[1])
        else:
            # RFC 1928 §6: BND.ADDR/BND.PORT carry "the associated IP address" — the address
            # the proxy used to connect to the target.
            reply_address = Address.from_host(bound[0], bound[1])
        self._reply(transport, Reply.SUCCEEDED, record, reply_address)
        if self._http is None:
            trailing, client_eof = self._conn.trailing_data
        else:  # bytes pipelined after the CONNECT head belong to the tunnel too
            trailing, client_eof = self._http.trailing_data
        self.relay = relay
        record.live_counts = relay.bytes_counts
        relay.attach_client(transport, trailing, client_eof)
