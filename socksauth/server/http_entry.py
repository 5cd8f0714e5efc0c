"""The HTTP proxy's entry: a client's first request head and its Proxy-Authorization login,
then CONNECT's tunnel or forwarded requests under the same policy; HttpEntry, a part of
ClientConnection (the head, responses and forwarding are server/http.py's)."""

from __future__ import annotations

import asyncio
import socket
from typing import TYPE_CHECKING

from socksauth.connection_record import ConnectionRecord, Outcome
from socksauth.errors import StoreUnavailable
from socksauth.logs import get_logger
from socksauth.protocol import Address, AddressType, Command, CommandRequest, Reply
from socksauth.protocol.detect import Kind
from socksauth.protocol.http import ProxyRequest, RequestForm
from socksauth.server.egress import split_session
from socksauth.server.http import HttpExchange
from socksauth.server.outbound import NotAllowed, ResolvedAddress, reply_for_error

if TYPE_CHECKING:
    from socksauth.server.client_parts import ClientParts

# The entry logs as the client connection it serves.
client_log = get_logger("client")


class HttpEntry:
    """The HTTP proxy's entry, a part of ClientConnection."""

    _http: HttpExchange | None

    async def _serve_http(
        self: ClientParts, transport: asyncio.Transport, record: ConnectionRecord, deadline: float
    ) -> None:
        """An HTTP proxy client: its first request head before the handshake deadline, the
        RFC 1929 login's authenticator for its ``Proxy-Authorization: Basic``, the same
        limits and policy; then a CONNECT tunnel (the same relay) or forwarded requests."""
        assert self.protocol.http is not None
        record.protocol = Kind.HTTP
        exchange = self._http = HttpExchange(self.protocol.http, self.protocol, transport)
        request = await exchange.read_request(deadline)
        if request is None:
            record.outcome = Outcome.CLIENT_GONE
            return
        credentials = self._login = request.credentials
        if credentials is None and not self._settings.is_trusted(record.client_host):
            # RFC 9110 §15.5.8: 407 says the client "needs to authenticate itself in order
            # to use a proxy"; not audited: every browser's first request gets one.
            exchange.challenge()
            record.outcome = Outcome.AUTH_REQUIRED
            return
        if credentials is not None:
            if self._slot is not None:
                self._slot.leave_handshake()  # as for RFC 1929 credentials (_handshake)
            account, self._session = split_session(
                credentials.username, self._settings.session_separator
            )
            record.username = account
            try:
                async with asyncio.timeout_at(deadline):
                    result = await self._authenticator.login(
                        account, credentials.password, record.client_host
                    )
            except StoreUnavailable:
                # Not the password's fault: 503, not a 407 that would ask for another one.
                exchange.refuse(503)
                record.outcome = Outcome.STORE_UNAVAILABLE
                return
            user = self.user = result.user
            if user is None:
                # As a wrong RFC 1929 password: same throttle, same cost, the same answer
                # whether wrong, delayed, locked out or from elsewhere, then a close.
                exchange.challenge()
                self._login_refused(record, account, result)
                return
        if self._slot is not None:
            self._slot.leave_handshake()  # trusted: no credentials were read
        record.command = Command.CONNECT
        record.target = request.target
        connect = CommandRequest(Command.CONNECT, request.target)
        if request.form is RequestForm.AUTHORITY:
            await self._dispatch(transport, connect, record)
            return
        if not await self._admit_request(transport, connect, record):
            return
        await exchange.forward(
            self._open_origin,
            self._same_login,
            self._settings.idle_timeout_seconds,
            self._access.bandwidth.buckets(self.user),
        )
        if record.outcome is Outcome.ERROR:  # not ended by a refused or failed request
            record.outcome = Outcome.CLOSED

    def _same_login(self: ClientParts, request: ProxyRequest) -> bool:
        """A later request on a forwarding connection keeps its login: credentials absent
        (the connection is authenticated) or the same as the first request's."""
        return request.credentials is None or request.credentials == self._login

    async def _open_origin(self: ClientParts, target: Address) -> socket.socket | None:
        """A connection to a forwarded request's origin, under the policy CONNECT has;
        None when refused or failed (the client has its 403, 502 or 504 then)."""
        record, transport = self.record, self._transport
        assert record is not None and transport is not None
        first = record.reply is None
        if not first:
            # The connection's lease is held since the first request: the policy only.
            verdict = self._request_verdict(Command.CONNECT, target)
            if verdict is not None and not verdict.allowed:
                self._deny(transport, record, verdict)
                return None
        name = target.host if target.type is AddressType.DOMAINNAME else None

        def allow(resolved: ResolvedAddress) -> bool:
            return self._allows(
                Command.CONNECT, name, str(resolved.sockaddr[0]), resolved.sockaddr[1]
            )

        try:
            sock = await self._dialer.connect(target, allow)
        except NotAllowed:
            self._deny(transport, record, self._denial)
            return None
        except OSError as error:
            reply = reply_for_error(error)
            client_log.info("%s: GET %s failed: %s (%s)", record.client, target, reply.name, error)
            self._reply(transport, reply, record)
            record.outcome = Outcome.CONNECT_FAILED
            return None
        if first:
            peer = sock.getpeername()
            record.dialed = str(Address.from_host(peer[0], peer[1]))
            self._reply(transport, Reply.SUCCEEDED, record)  # the row opens here
        return sock
