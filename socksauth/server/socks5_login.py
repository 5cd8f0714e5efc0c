"""The SOCKS5 handshake and login: a load balancer's PROXY header, greeting, method, RFC 1929
credentials and the request, read through the sans-IO core; Socks5Handshake, a part of
ClientConnection."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from socksauth import protocol
from socksauth.auth.authenticator import LoginRefusal, LoginResult
from socksauth.connection_record import ConnectionRecord, Outcome
from socksauth.errors import StoreUnavailable
from socksauth.logs import get_logger
from socksauth.protocol import (
    NEED_DATA,
    PAUSED,
    AuthMethod,
    AuthReply,
    AuthStatus,
    CommandRequest,
    ConnectionClosed,
    Credentials,
    Greeting,
    LocalProtocolError,
    MethodSelection,
    RemoteProtocolError,
)
from socksauth.protocol.detect import Kind
from socksauth.protocol.events import ClientEvent
from socksauth.protocol.proxy_header import HeaderKind, ProxyHeaderError
from socksauth.server.egress import split_session

if TYPE_CHECKING:
    from socksauth.server.client_parts import ClientParts

# The handshake logs as the client connection it serves.
client_log = get_logger("client")

_OUTCOME_BY_REFUSAL = {
    LoginRefusal.AUTH_FAILED: Outcome.AUTH_FAILED,
    LoginRefusal.THROTTLED: Outcome.THROTTLED,
    LoginRefusal.LOCKED_OUT: Outcome.LOCKED_OUT,
}


class Socks5Handshake:
    """The SOCKS5 handshake and login, a part of ClientConnection."""

    async def _next_event(self: ClientParts) -> ClientEvent:
        while True:
            event = self._conn.next_event()
            if event is NEED_DATA:
                await self.protocol.wait_for_data()
                continue
            if event is PAUSED:
                raise LocalProtocolError("the handshake waits for our message, not the client's")
            return event

    async def _take_proxy_header(
        self: ClientParts, record: ConnectionRecord, deadline: float
    ) -> bool:
        """From a load balancer (proxy_protocol_networks), read its PROXY header before
        anything else, and let the client address it names stand for the peer; False when
        the load balancer closed without a header (a TCP health check).

        Raises:
            ProxyHeaderError: the load balancer's first bytes are not a valid header.
            TimeoutError: no complete header by the deadline.
        """
        handshake = self.protocol
        async with asyncio.timeout_at(deadline):
            while handshake.proxy_header is None:
                if handshake.lost or handshake.eof:
                    self._load_balancer_check = True
                    record.outcome = Outcome.CLIENT_GONE
                    return False
                await handshake.wait_for_data()
        header = handshake.proxy_header
        self._load_balancer_check = header.kind is HeaderKind.LOCAL
        if header.kind is HeaderKind.PROXY:
            assert header.source is not None
            client_log.debug(
                "%s: client %s (PROXY v%d)", record.client, header.source, header.version
            )
            record.client_host = header.source.host
            record.client_port = header.source.port
        return True

    async def _handshake(
        self: ClientParts,
        transport: asyncio.Transport,
        client_host: str,
        record: ConnectionRecord,
        deadline: float,
    ) -> CommandRequest | Kind | None:
        """Greeting → method → credentials → request, within the handshake deadline;
        Kind.HTTP when the first byte says the client speaks HTTP instead."""
        async with asyncio.timeout_at(deadline):
            try:
                # With HTTP on and nothing read yet: the read the greeting waits for anyway,
                # and its first byte decides (no extra read, no copy). The first bytes may
                # have come already: with a PROXY header, or from uvloop right at accept.
                while self.protocol.kind is None:
                    await self.protocol.wait_for_data()
                if self.protocol.kind is Kind.HTTP:
                    return Kind.HTTP
                greeting = await self._next_event()
            except RemoteProtocolError:
                if self.protocol.last_read_was_proxy_header():
                    raise ProxyHeaderError(
                        "a PROXY protocol header from an address not in proxy_protocol_networks"
                    ) from None
                raise
            if isinstance(greeting, ConnectionClosed):
                record.outcome = Outcome.CLIENT_GONE
                return None
            assert isinstance(greeting, Greeting)
            method = protocol.select_method(
                greeting.methods, allow_no_auth=self._settings.is_trusted(client_host)
            )
            transport.write(self._conn.send(MethodSelection(method)))
            if method is AuthMethod.NO_ACCEPTABLE_METHODS:
                # RFC 1928 §3: "the client MUST close the connection"; we close too.
                record.outcome = Outcome.NO_ACCEPTABLE_METHOD
                return None
            if method is AuthMethod.USERNAME_PASSWORD:
                credentials = await self._next_event()
                if isinstance(credentials, ConnectionClosed):
                    record.outcome = Outcome.CLIENT_GONE
                    return None
                assert isinstance(credentials, Credentials)
                if self._slot is not None:
                    # Read in full: what is left is the verification (a few at a time,
                    # addresses in turn); the address's next client may start meanwhile.
                    self._slot.leave_handshake()
                account, self._session = split_session(
                    credentials.username, self._settings.session_separator
                )
                record.username = account
                try:
                    result = await self._authenticator.login(
                        account, credentials.password, client_host
                    )
                except StoreUnavailable:
                    # The account could not be looked up: the same answer as a wrong
                    # password (RFC 1929 §2: "the server MUST close the connection"), its
                    # own outcome; the authenticator logs a summary once a minute.
                    transport.write(self._conn.send(AuthReply(AuthStatus.FAILURE)))
                    record.outcome = Outcome.STORE_UNAVAILABLE
                    return None
                user = self.user = result.user
                # The same RFC 1929 failure whether the password was wrong, the attempt
                # delayed, the pair locked out or the client outside the user's networks:
                # no oracle for a guesser.
                status = AuthStatus.SUCCESS if user is not None else AuthStatus.FAILURE
                transport.write(self._conn.send(AuthReply(status)))
                if user is None:
                    # RFC 1929 §2: on failure "the server MUST close the connection".
                    self._login_refused(record, account, result)
                    return None
            request = await self._next_event()
            if isinstance(request, ConnectionClosed):
                record.outcome = Outcome.CLIENT_GONE
                return None
            assert isinstance(request, CommandRequest)
            record.command = request.command
            record.target = request.address
            return request

    def _login_refused(
        self: ClientParts, record: ConnectionRecord, account: str, result: LoginResult
    ) -> None:
        """Audit and log a refused login by its reason (the client was told the same)."""
        if result.wrong_network:
            record.outcome = Outcome.WRONG_NETWORK
            client_log.info(
                "%s: login refused for user %r: not from its client networks",
                record.client,
                account,
            )
            return
        refusal = result.refusal or LoginRefusal.AUTH_FAILED
        record.outcome = _OUTCOME_BY_REFUSAL[refusal]
        client_log.info("%s: login failed for user %r (%s)", record.client, account, refusal.value)
