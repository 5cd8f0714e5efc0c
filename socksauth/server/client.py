"""ClientConnection: drives the sans-IO handshake for one client, then hands it to a tunnel."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

from socksauth.auth.authenticator import Authenticator
from socksauth.config import ListenAddress, Settings
from socksauth.connection_record import ConnectionObserver, ConnectionRecord, NoObserver, Outcome
from socksauth.logs import get_logger
from socksauth.protocol import (
    Address,
    AddressType,
    Command,
    CommandReply,
    CommandRequest,
    Credentials,
    RemoteProtocolError,
    Reply,
    ServerConnection,
)
from socksauth.protocol.address import ip_literal
from socksauth.protocol.detect import Kind
from socksauth.protocol.proxy_header import ProxyHeaderError
from socksauth.server.access import Access
from socksauth.server.bind import BindCommand
from socksauth.server.connect import ConnectCommand
from socksauth.server.egress import Egress
from socksauth.server.handshake import HandshakeProtocol
from socksauth.server.http import HttpExchange
from socksauth.server.http_entry import HttpEntry
from socksauth.server.limits import ClientSlot, Refusal, UserLease
from socksauth.server.no_access import NO_ACCESS
from socksauth.server.outbound import Dialer
from socksauth.server.policy import Verdict, parse_address
from socksauth.server.relay import CloseReason, Relay
from socksauth.server.socks5_login import Socks5Handshake
from socksauth.server.udp import UdpAssociation, UdpCommand
from socksauth.store.interfaces import UserRecord

log = get_logger("client")

_OUTCOME_BY_CLOSE = {
    CloseReason.CLOSED: Outcome.CLOSED,
    CloseReason.CLIENT_ERROR: Outcome.CLIENT_ERROR,
    CloseReason.TARGET_ERROR: Outcome.TARGET_ERROR,
    CloseReason.SHUTDOWN: Outcome.SHUTDOWN,
    CloseReason.IDLE_TIMEOUT: Outcome.IDLE_TIMEOUT,
}


class ClientConnection(Socks5Handshake, HttpEntry, ConnectCommand, BindCommand, UdpCommand):
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
