"""ClientConnection: drives the sans-IO handshake for one client, then hands it to a tunnel."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import UTC, datetime, timedelta

from socksauth import protocol
from socksauth.auth.authenticator import Authenticator, LoginRefusal, LoginResult
from socksauth.config import ListenAddress, Settings
from socksauth.connection_record import ConnectionObserver, ConnectionRecord, NoObserver, Outcome
from socksauth.errors import StoreUnavailable
from socksauth.logs import get_logger
from socksauth.protocol import (
    NEED_DATA,
    PAUSED,
    Address,
    AddressType,
    AuthMethod,
    AuthReply,
    AuthStatus,
    Command,
    CommandReply,
    CommandRequest,
    ConnectionClosed,
    Credentials,
    Greeting,
    LocalProtocolError,
    MethodSelection,
    RemoteProtocolError,
    Reply,
    ServerConnection,
)
from socksauth.protocol.address import ip_literal
from socksauth.protocol.detect import Kind
from socksauth.protocol.events import ClientEvent
from socksauth.protocol.http import ProxyRequest, RequestForm
from socksauth.protocol.proxy_header import HeaderKind, ProxyHeaderError
from socksauth.server.access import Access
from socksauth.server.bind import BindCommand
from socksauth.server.connect import ConnectCommand
from socksauth.server.egress import Egress, split_session
from socksauth.server.handshake import HandshakeProtocol
from socksauth.server.http import HttpExchange
from socksauth.server.limits import ClientSlot, Refusal, UserLease
from socksauth.server.no_access import NO_ACCESS
from socksauth.server.outbound import Dialer, NotAllowed, ResolvedAddress, reply_for_error
from socksauth.server.policy import Verdict, parse_address
from socksauth.server.relay import CloseReason, Relay
from socksauth.server.udp import UdpAssociation, UdpCommand
from socksauth.store.interfaces import UserRecord

log = get_logger("client")

_OUTCOME_BY_REFUSAL = {
    LoginRefusal.AUTH_FAILED: Outcome.AUTH_FAILED,
    LoginRefusal.THROTTLED: Outcome.THROTTLED,
    LoginRefusal.LOCKED_OUT: Outcome.LOCKED_OUT,
}

_OUTCOME_BY_CLOSE = {
    CloseReason.CLOSED: Outcome.CLOSED,
    CloseReason.CLIENT_ERROR: Outcome.CLIENT_ERROR,
    CloseReason.TARGET_ERROR: Outcome.TARGET_ERROR,
    CloseReason.SHUTDOWN: Outcome.SHUTDOWN,
    CloseReason.IDLE_TIMEOUT: Outcome.IDLE_TIMEOUT,
}


class ClientConnection(ConnectCommand, BindCommand, UdpCommand):
    """One client from accept to close: handshake, authentication, command, tunnel."""

    def __init__(
        self,
        settings: Settings,
        authenticator: Authenticator,
        dialer: Dialer,
        observer: ConnectionObserver | None = None,
        access: Access | None = None,
        listener: ListenAddress | None = None,
    ) -> None:
        """``access``: policy and limits (None: neither, the shared ``NO_ACCESS``);
        ``listener``: the listen address the client came in on, for its client networks."""
        self._settings = settings
        self._authenticator = authenticator
        self._dialer = dialer
        self._observer = observer or NoObserver()
        self._access = access if access is not None else NO_ACCESS
        self._listener = listener
        self._slot: ClientSlot | None = None
        self._lease: UserLease | None = None
        self._transport: asyncio.Transport | None = None
        self._revoked: str | None = None
        self._quota_exceeded = False
        # The part of traffic() the quota tracker has counted (server/quota.py).
        self.quota_counted = 0
        # The session key from the username (alice-session-KEY), for sticky egress.
        self._session: str | None = None
        self._killed_by: str | None = None
        self._denial: Verdict | None = None
        # The load balancer connected on its own (no header, or a LOCAL one): a health check
        # when it leaves without a word, logged at debug instead of once per check.
        self._load_balancer_check = False
        self.user: UserRecord | None = None  # the account as it logged in
        self._conn = ServerConnection()
        self.protocol = HandshakeProtocol(
            self._conn,
            settings if settings.proxy_protocol_networks else None,
            http_enabled=settings.http_enabled,
        )
        # Set once the first byte says HTTP: the head, the responses, the forwarding.
        self._http: HttpExchange | None = None
        self._login: Credentials | None = None  # HTTP: the first request's credentials
        self.relay: Relay | None = None
        self.association: UdpAssociation | None = None
        self.record: ConnectionRecord | None = None
        # True until the request's (first) reply is sent or the client is gone: what a
        # graceful shutdown lets finish before the grace period for tunnels starts.
        self.in_handshake = True
        # Made only when a shutdown waits for this handshake: none per client otherwise.
        self._handshake_over: asyncio.Future[None] | None = None

    def handshake_over(self) -> asyncio.Future[None]:
        """Done once the handshake has ended (reply sent, or the client gone)."""
        if self._handshake_over is None:
            self._handshake_over = asyncio.get_running_loop().create_future()
            if not self.in_handshake:
                self._handshake_over.set_result(None)
        return self._handshake_over

    def _end_handshake(self) -> None:
        self.in_handshake = False
        self.protocol.release_buffer()
        if self._handshake_over is not None and not self._handshake_over.done():
            self._handshake_over.set_result(None)

    async def run(self) -> ConnectionRecord:
        # The task starts in the protocol factory, before asyncio calls connection_made.
        transport = await self.protocol.connected
        peer = transport.get_extra_info("peername") or ("", 0)
        record = self.record = ConnectionRecord(
            client_host=peer[0],
            client_port=peer[1],
            started_at=datetime.now(UTC),
            started=time.monotonic(),
        )
        self._transport = transport
        deadline = asyncio.get_running_loop().time() + self._settings.handshake_timeout_seconds
        try:
            if self.protocol.from_load_balancer and not await self._take_proxy_header(
                record, deadline
            ):
                return record
            # From here record.client_host is the client's own address, also behind a load
            # balancer: admission, trust, throttling, audit and UDP all use it.
            await self._admit(record.client_host, deadline)
            request = await self._handshake(transport, record.client_host, record, deadline)
            if request is Kind.HTTP:
                await self._serve_http(transport, record, deadline)
            elif isinstance(request, CommandRequest):
                if self._slot is not None:
                    self._slot.leave_handshake()  # trusted: no credentials were read
                await self._dispatch(transport, request, record)
            if self.relay is not None:
                # The tunnel runs on the relay's callbacks. Waited for here, not in
                # _tunnel: the handshake's frames would live as long as the tunnel.
                record.outcome = _OUTCOME_BY_CLOSE[await self.relay.ended]
        except Refusal as refusal:
            record.outcome = Outcome.REFUSED
            log.debug("%s: not admitted: %s", record.client, refusal)
            transport.abort()
        except ProxyHeaderError as error:
            # A load balancer that is not (or not correctly) configured; one line per
            # connection, warning because an operator has to fix something.
            record.outcome = Outcome.PROTOCOL_ERROR
            log.warning("%s: %s", record.client, error)
        except RemoteProtocolError as error:
            record.outcome = Outcome.PROTOCOL_ERROR
            log.info("%s: protocol error: %s", record.client, error)
            if error.reply_hint is not None and not transport.is_closing():
                transport.write(error.reply_hint)
        except TimeoutError:
            record.outcome = Outcome.HANDSHAKE_TIMEOUT
        except asyncio.CancelledError:
            record.outcome = Outcome.SHUTDOWN
            if self.relay is not None:
                self.relay.close(CloseReason.SHUTDOWN)
            raise
        except Exception:
            # The one per-client boundary: whatever went wrong, log it once, close this
            # client, keep serving everyone else.
            record.outcome = Outcome.ERROR
            log.exception("%s: unexpected error", record.client)
        finally:
            self._end_handshake()
            if self._http is not None:
                self._http.close()
            if not transport.is_closing():
                transport.close()
            if self._slot is not None:
                self._slot.release()
            if self._lease is not None:
                self._lease.release()
            if self._revoked is not None:
                record.outcome = Outcome.REVOKED
            if self._quota_exceeded:
                record.outcome = Outcome.QUOTA_EXCEEDED
            if self._killed_by is not None:
                record.outcome = Outcome.KILLED
            record.live_counts = None
            if self.relay is not None:
                record.bytes_from_client, record.bytes_to_client = self.relay.bytes_counts()
            elif self._http is not None and self._http.requests:
                record.requests = self._http.requests
                record.bytes_from_client = self._http.bytes_from_client
                record.bytes_to_client = self._http.bytes_to_client
            self._access.quotas.finished(self)
            record.duration_seconds = time.monotonic() - record.started
            record.ended_at = record.started_at + timedelta(seconds=record.duration_seconds)
            if self._load_balancer_check and record.outcome is Outcome.CLIENT_GONE:
                log.debug("%s: load balancer health check", record.client)
            elif record.outcome is Outcome.STORE_UNAVAILABLE:
                # Counted in the authenticator's summary line: not one line per attempt.
                log.debug("%s: login refused, the store is unavailable", record.client)
            else:
                _log_finished(record)
            self._observer.finished(record)
        return record

    async def _admit(self, client_host: str, deadline: float) -> None:
        """Returns once this client may start its handshake: at once, or when its address's
        turn comes (server/limits.py), before the handshake deadline.

        Raises:
            Refusal: this client may not even start a handshake.
            TimeoutError: it was still waiting at the deadline.
        """
        if self._listener is not None and not self._listener.admits(client_host):
            raise Refusal(f"not in the client networks of {self._listener}")
        slot = self._slot = self._access.connections.admit(client_host)
        if slot.started:
            return
        # Not read from while it waits: what it sends stays in the kernel's buffer.
        started = asyncio.get_running_loop().create_future()

        def start() -> None:
            if not started.done():
                started.set_result(None)

        slot.when_started(start)
        async with asyncio.timeout_at(deadline):
            await started

    def end(self, reason: str) -> None:
        """End this client's tunnel, association or binding now (revoked account)."""
        self._revoked = reason
        self._close_now()

    def _close_now(self) -> None:
        """Close the tunnel, association, binding or HTTP forwarding at once (the reason is
        the caller's to record)."""
        if self.relay is not None:
            self.relay.close(CloseReason.SHUTDOWN)
        elif self._transport is not None:
            if self._http is not None:
                self._http.close()  # a forwarded response may be streaming from the origin
            # The association and the binding end when their control connection does.
            self._transport.abort()

    def end_for_quota(self) -> None:
        """End this client's tunnel, association or binding now: its quota is used up."""
        self._quota_exceeded = True
        self.end("quota exceeded")

    def traffic(self) -> int:
        """Bytes moved both ways so far, from the counters the relay keeps anyway."""
        if self.relay is not None:
            from_client, to_client = self.relay.bytes_counts()
            return from_client + to_client
        if self.association is not None:
            counters = self.association.counters
            return counters.bytes_from_client + counters.bytes_to_client
        if self._http is not None:  # forwarded plain-HTTP requests
            return self._http.bytes_from_client + self._http.bytes_to_client
        return 0

    def kill(self, by: str) -> None:
        """End this client's tunnel, association or binding now: an administrator (``by``)
        kicked it. Audited as KILLED; the account stays as it is."""
        if self._killed_by is None:
            log.info("%s: killed by %s", self.record.client if self.record else "-", by)
        self._killed_by = by
        self._close_now()

    async def _next_event(self) -> ClientEvent:
        while True:
            event = self._conn.next_event()
            if event is NEED_DATA:
                await self.protocol.wait_for_data()
                continue
            if event is PAUSED:
                raise LocalProtocolError("the handshake waits for our message, not the client's")
            return event

    async def _take_proxy_header(self, record: ConnectionRecord, deadline: float) -> bool:
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
            log.debug("%s: client %s (PROXY v%d)", record.client, header.source, header.version)
            record.client_host = header.source.host
            record.client_port = header.source.port
        return True

    async def _handshake(
        self,
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

    def _login_refused(self, record: ConnectionRecord, account: str, result: LoginResult) -> None:
        """Audit and log a refused login by its reason (the client was told the same)."""
        if result.wrong_network:
            record.outcome = Outcome.WRONG_NETWORK
            log.info(
                "%s: login refused for user %r: not from its client networks",
                record.client,
                account,
            )
            return
        refusal = result.refusal or LoginRefusal.AUTH_FAILED
        record.outcome = _OUTCOME_BY_REFUSAL[refusal]
        log.info("%s: login failed for user %r (%s)", record.client, account, refusal.value)

    async def _serve_http(
        self, transport: asyncio.Transport, record: ConnectionRecord, deadline: float
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

    def _same_login(self, request: ProxyRequest) -> bool:
        """A later request on a forwarding connection keeps its login: credentials absent
        (the connection is authenticated) or the same as the first request's."""
        return request.credentials is None or request.credentials == self._login

    async def _open_origin(self, target: Address) -> socket.socket | None:
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
            log.info("%s: GET %s failed: %s (%s)", record.client, target, reply.name, error)
            self._reply(transport, reply, record)
            record.outcome = Outcome.CONNECT_FAILED
            return None
        if first:
            peer = sock.getpeername()
            record.dialed = str(Address.from_host(peer[0], peer[1]))
            self._reply(transport, Reply.SUCCEEDED, record)  # the row opens here
        return sock

    async def _dispatch(
        self, transport: asyncio.Transport, request: CommandRequest, record: ConnectionRecord
    ) -> None:
        if not await self._admit_request(transport, request, record):
            return
        if request.command is Command.CONNECT:
            await self._connect(transport, request.address, record)
        elif request.command is Command.BIND and self._settings.bind_enabled:
            await self._bind(transport, request.address, record)
        elif request.command is Command.UDP_ASSOCIATE and self._settings.udp_enabled:
            await self._associate(transport, request.address, record)
        else:
            self._reply(transport, Reply.COMMAND_NOT_SUPPORTED, record)
            record.outcome = Outcome.UNSUPPORTED

    def _reply(
        self,
        transport: asyncio.Transport,
        reply: Reply,
        record: ConnectionRecord,
        bound: Address | None = None,
    ) -> None:
        record.reply = reply
        if self._http is None:
            transport.write(self._conn.send(CommandReply(reply, bound or Address.unspecified())))
        else:
            transport.write(self._http.reply(reply))
        self._end_handshake()
        if reply is Reply.SUCCEEDED:
            # The tunnel (association, binding) exists from here: so does its audit row.
            self._observer.opened(record)

    async def _admit_request(
        self, transport: asyncio.Transport, request: CommandRequest, record: ConnectionRecord
    ) -> bool:
        """The per-user connection limit, then the policy for what the request alone tells;
        replies CONNECTION_NOT_ALLOWED and returns False when refused."""
        access = self._access
        user = self.user
        if (
            user is not None
            and user.quota_bytes is not None
            and not await access.quotas.admit(user)
        ):
            log.info("%s: %r has used up its traffic quota", record.client, user.username)
            self._reply(transport, Reply.CONNECTION_NOT_ALLOWED, record)
            record.outcome = Outcome.QUOTA_EXCEEDED
            return False
        if user is not None:
            self._lease = await access.user_connections.acquire(user.username, user.max_connections)
            if self._lease is None:
                log.info(
                    "%s: %r already has %s connections (max_connections)",
                    record.client,
                    user.username,
                    user.max_connections,
                )
                self._reply(transport, Reply.CONNECTION_NOT_ALLOWED, record)
                record.outcome = Outcome.LIMIT_EXCEEDED
                return False
        verdict = self._request_verdict(request.command, request.address)
        if verdict is not None and not verdict.allowed:
            self._deny(transport, record, verdict)
            return False
        return True

    def _request_verdict(self, command: Command, target: Address) -> Verdict | None:
        """The policy's verdict on what a request alone tells (None: decided per address)."""
        username = None if self.user is None else self.user.username
        policy = self._access.policy
        verdict: Verdict | None
        if command is Command.UDP_ASSOCIATE:
            # DST is where the client sends from, not a destination: each datagram is checked.
            verdict = policy.check_request(username, command, None, None)
        elif target.type is AddressType.DOMAINNAME:
            verdict = policy.check_request(username, command, target.host, target.port)
        else:
            address = ip_literal(target.host)
            assert address is not None  # an Address of type IPV4/IPV6 holds an IP literal
            if command is Command.BIND and address.is_unspecified:
                verdict = policy.check_request(username, command, None, None)
            else:
                verdict = policy.check_address(username, command, address, target.port)
        return verdict

    def _deny(
        self, transport: asyncio.Transport, record: ConnectionRecord, verdict: Verdict | None
    ) -> None:
        reason = verdict.reason if verdict is not None else "not allowed"
        log.info(
            "%s: %s %s denied: %s",
            record.client,
            record.command.name if record.command is not None else "-",
            record.target,
            reason,
        )
        self._reply(transport, Reply.CONNECTION_NOT_ALLOWED, record)
        record.outcome = Outcome.DENIED

    def _allows(self, command: Command, name: str | None, ip: str, port: int) -> bool:
        """The policy's verdict on one resolved address; a refusal is kept for the log."""
        address = parse_address(ip)
        if address is None:
            return False
        verdict = self._access.policy.check_address(
            None if self.user is None else self.user.username, command, address, port, name
        )
        if not verdict.allowed:
            self._denial = verdict
        return verdict.allowed

    def _egress(self) -> Egress | None:
        """Where this request's outbound traffic leaves from (None: the system chooses)."""
        return self._access.egress.choose(self.user, self._session)


def _log_finished(record: ConnectionRecord) -> None:
    log.info(
        "%s user=%s %s %s out=%d in=%d %.3fs %s%s%s%s",
        record.client,
        record.username if record.username is not None else "-",
        record.command.name if record.command is not None else "-",
        record.target if record.target is not None else "-",
        record.bytes_from_client,
        record.bytes_to_client,
        record.duration_seconds,
        record.outcome.value,
        f" reply={record.reply.name}" if record.reply not in (None, Reply.SUCCEEDED) else "",
        (
            f" datagrams out={record.datagrams_from_client} in={record.datagrams_to_client}"
            f" dropped={record.datagrams_dropped}"
            if record.command is Command.UDP_ASSOCIATE and record.reply is Reply.SUCCEEDED
            else ""
        ),
        f" http requests={record.requests}" if record.protocol is Kind.HTTP else "",
    )
