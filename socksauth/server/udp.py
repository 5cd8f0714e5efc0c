"""UDP ASSOCIATE: one relay socket per association; datagrams checked, forwarded and counted.

The client sends datagrams with the RFC 1928 §7 header to the client-facing socket; we strip
the header and send the payload to the target from an outbound socket (one per address
family, unconnected). A target's reply comes back to that outbound socket, gets a header
with the target's address and goes to the client. Nothing is buffered beyond what the
kernel and asyncio queue: a datagram that cannot be forwarded now is dropped and counted.
``UdpCommand`` answers the request: opens the association, replies, runs it to its end.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import functools
import ipaddress
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from socksauth.connection_record import ConnectionRecord, Outcome
from socksauth.logs import get_logger
from socksauth.protocol import (
    Address,
    AddressType,
    Command,
    RemoteProtocolError,
    Reply,
    UdpHeader,
    parse_datagram,
)
from socksauth.server.outbound import (
    EgressUnavailable,
    bind_source,
    has_egress_failure,
    reply_for_error,
)

if TYPE_CHECKING:
    from socksauth.server.client_parts import ClientParts

log = get_logger("udp")
# The UDP ASSOCIATE handler logs as the client connection it serves.
client_log = get_logger("client")

# Resolved names are kept this long: long enough for a burst of queries to one name, short
# enough that a changed record is picked up soon. We see no DNS TTLs through getaddrinfo().
NAME_CACHE_SECONDS = 30.0
NAME_CACHE_SIZE = 256
RESOLVE_TIMEOUT_SECONDS = 5.0
# While a name resolves, its datagrams wait here; beyond these bounds they are dropped.
_NAMES_RESOLVING_MAX = 16
_DATAGRAMS_WAITING_PER_NAME = 32
# Target addresses the client sent to, whose replies we let through (LRU, bounded).
_CONTACTED_MAX = 4096


class Drop(enum.Enum):
    """Why a datagram was not forwarded."""

    WRONG_SOURCE = "wrong_source"  # client side: not the client's address and port
    MALFORMED = "malformed"  # header does not parse
    FRAGMENTED = "fragmented"  # FRAG != 0: we do not reassemble
    NOT_ALLOWED = "not_allowed"  # the destination rule said no
    UNRESOLVED = "unresolved"  # the domain name gave no usable address
    NO_ROUTE = "no_route"  # no outbound socket of the target's address family
    UNSOLICITED = "unsolicited"  # target side: from an address the client never sent to
    CONGESTED = "congested"  # the socket's send queue is full
    SEND_FAILED = "send_failed"  # the kernel refused it (EMSGSIZE, …)


class AssociationEnd(enum.Enum):
    """Why an association ended."""

    CLOSED = "closed"  # the TCP control connection closed (EOF or close)
    IDLE_TIMEOUT = "idle_timeout"  # no datagram either way for the idle timeout


@dataclass(slots=True)
class UdpCounters:
    """Forwarded datagrams and their payload bytes each way (headers not counted), and drops."""

    datagrams_from_client: int = 0
    bytes_from_client: int = 0
    datagrams_to_client: int = 0
    bytes_to_client: int = 0
    dropped: Counter[Drop] = field(default_factory=Counter)
    first_target: str | None = None  # host:port of the first datagram sent, for the audit

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


@functools.lru_cache(maxsize=1024)  # called per datagram, with few distinct addresses
def normalise_host(host: str) -> str:
    """An IP literal in canonical form, IPv4-mapped IPv6 as plain IPv4; names unchanged."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _family_of(ip: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def _sockaddr(ip: str, port: int) -> tuple[str, int] | tuple[str, int, int, int]:
    return (ip, port, 0, 0) if ":" in ip else (ip, port)


class NameCache:
    """Domain name → IP for a short while; bounded, the oldest entry goes first."""

    def __init__(
        self,
        ttl_seconds: float = NAME_CACHE_SECONDS,
        max_names: int = NAME_CACHE_SIZE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl_seconds
        self._max = max_names
        self._clock = clock
        self._entries: OrderedDict[str, tuple[float, str]] = OrderedDict()

    def get(self, name: str) -> str | None:
        entry = self._entries.get(name.lower())
        if entry is None:
            return None
        expires, ip = entry
        if self._clock() >= expires:
            del self._entries[name.lower()]
            return None
        return ip

    def put(self, name: str, ip: str) -> None:
        key = name.lower()
        self._entries.pop(key, None)
        self._entries[key] = (self._clock() + self._ttl, ip)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


class _Side(asyncio.DatagramProtocol):
    """One socket of an association; ``congested`` while asyncio holds its queue too full."""

    def __init__(self, association: UdpAssociation) -> None:
        self._association = association
        self.congested = False

    def pause_writing(self) -> None:
        self.congested = True

    def resume_writing(self) -> None:
        self.congested = False

    def error_received(self, exc: Exception) -> None:
        self._association.send_failed(exc)


class _ClientSide(_Side):
    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self._association.from_client(data, cast(tuple[str, int], addr))


class _TargetSide(_Side):
    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self._association.from_target(data, cast(tuple[str, int], addr))


class _ControlWatch(asyncio.Protocol):
    """Watches the TCP control connection: RFC 1928 §7 "A UDP association terminates when the
    TCP connection that the UDP ASSOCIATE request arrived on terminates."

    The RFC defines nothing more on that connection, so bytes the client sends are discarded.
    """

    def __init__(self, ended: asyncio.Future[None]) -> None:
        self._ended = ended

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        self._end()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()

    def _end(self) -> None:
        if not self._ended.done():
            self._ended.set_result(None)


class UdpAssociation:
    """One UDP ASSOCIATE: the client-facing socket, outbound sockets, filters and counters.

    Args:
        client_host: the IP of the TCP control connection's client; RFC 1928 §7: the relay
            "MUST drop any datagrams arriving from any source IP address other than the one
            recorded for the particular association".
        client_port: the port the client declared in its request; 0 (not known yet) locks
            onto the source port of the first well-formed datagram from ``client_host``.
        allow: the per-user destination rule, asked for every datagram's destination.
        allow_resolved: asked (name, IP, port) for each datagram to a name, about the address
            the name resolved to, so a name cannot lead where its address may not go.
    """

    def __init__(
        self,
        *,
        client_host: str,
        client_port: int,
        idle_timeout_seconds: float,
        allow: Callable[[Address], bool] | None = None,
        names: NameCache | None = None,
        allow_resolved: Callable[[str, str, int], bool] | None = None,
        source: Callable[[int], str | None] | None = None,
    ) -> None:
        self._allow_resolved = allow_resolved
        # The user's egress: the local address to send from per family (None: any).
        self._source = source
        self._client_host = normalise_host(client_host)
        self._client_port = client_port
        self._idle_timeout = idle_timeout_seconds
        self._allow = allow
        self._names = names if names is not None else NameCache()
        self.counters = UdpCounters()
        self._client: tuple[asyncio.DatagramTransport, _Side] | None = None
        self._outbound: dict[socket.AddressFamily, tuple[asyncio.DatagramTransport, _Side]] = {}
        # Target addresses the client sent to → the header their replies get (built once).
        self._contacted: OrderedDict[tuple[str, int], bytes] = OrderedDict()
        self._waiting: dict[str, list[tuple[int, bytes]]] = {}
        self._resolving: set[asyncio.Task[None]] = set()
        self._last_activity = 0.0
        self.address: Address | None = None

    async def open(self, local_host: str) -> Address:
        """Bind the client-facing socket on ``local_host`` (port 0) and the outbound sockets.

        ``local_host`` is the local address of the TCP control connection: an address the
        client can reach, unlike 0.0.0.0. Returns the address for BND.ADDR/BND.PORT.
        """
        loop = asyncio.get_running_loop()
        host = normalise_host(local_host)
        self._last_activity = loop.time()
        try:
            transport, side = await loop.create_datagram_endpoint(
                lambda: _ClientSide(self), local_addr=(host, 0), family=_family_of(host)
            )
            self._client = transport, side
            for family in (socket.AF_INET, socket.AF_INET6):
                if self._source is not None:
                    source = self._source(family)
                    if source is not None:
                        self._outbound[family] = await self._bound_outbound(family, source)
                    # No egress address of this family: its targets drop (NO_ROUTE).
                    continue
                try:
                    outbound = await loop.create_datagram_endpoint(
                        lambda: _TargetSide(self), family=family
                    )
                except OSError as error:  # e.g. IPv6 disabled: targets of that family drop
                    log.debug("no outbound UDP socket for %s: %s", family.name, error)
                    continue
                self._outbound[family] = outbound
            if self._source is not None and not self._outbound:
                raise EgressUnavailable(errno.EADDRNOTAVAIL, "no egress address (unknown pool?)")
        except BaseException:
            await self.aclose()
            raise
        bound = transport.get_extra_info("sockname")
        self.address = Address.from_host(normalise_host(bound[0]), bound[1])
        return self.address

    async def _bound_outbound(
        self, family: socket.AddressFamily, source: str
    ) -> tuple[asyncio.DatagramTransport, _TargetSide]:
        """An outbound socket sending from the egress address ``source``.

        Raises:
            EgressUnavailable: the address is not (or no longer) on this host.
        """
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            bind_source(sock, source, defer_port=False)
            return await asyncio.get_running_loop().create_datagram_endpoint(
                lambda: _TargetSide(self), sock=sock
            )
        except BaseException:
            sock.close()
            raise

    async def run(self, control: asyncio.Transport, control_closed: bool) -> AssociationEnd:
        """Relay until the control connection closes or nothing moved for the idle timeout."""
        loop = asyncio.get_running_loop()
        if control_closed:
            return AssociationEnd.CLOSED
        ended: asyncio.Future[None] = loop.create_future()
        control.set_protocol(_ControlWatch(ended))
        if control.is_closing():
            return AssociationEnd.CLOSED
        control.resume_reading()
        while True:
            remaining = self._last_activity + self._idle_timeout - loop.time()
            if remaining <= 0:
                return AssociationEnd.IDLE_TIMEOUT
            done, _ = await asyncio.wait({ended}, timeout=remaining)
            if done:
                return AssociationEnd.CLOSED

    async def aclose(self) -> None:
        """Close every socket and stop pending resolutions."""
        for pair in (self._client, *self._outbound.values()):
            if pair is not None and not pair[0].is_closing():
                pair[0].close()
        for task in self._resolving:
            task.cancel()
        if self._resolving:
            await asyncio.gather(*self._resolving, return_exceptions=True)

    # --- client → target ------------------------------------------------------------------

    def from_client(self, data: bytes, addr: tuple[str, int]) -> None:
        host, port = normalise_host(addr[0]), addr[1]
        if host != self._client_host or self._client_port not in (0, port):
            self._drop(Drop.WRONG_SOURCE)
            return
        try:
            header, payload = parse_datagram(data)
        except RemoteProtocolError:
            self._drop(Drop.MALFORMED)
            return
        # RFC 1928 §7: "An implementation that does not support fragmentation MUST drop any
        # datagram whose FRAG field is other than X'00'."
        if header.fragment:
            self._drop(Drop.FRAGMENTED)
            return
        if self._client_port == 0:
            self._client_port = port
        target = header.address
        if self._allow is not None and not self._allow(target):
            self._drop(Drop.NOT_ALLOWED)
            return
        self._last_activity = asyncio.get_running_loop().time()
        if target.type is not AddressType.DOMAINNAME:
            self._send_to_target(normalise_host(target.host), target.port, payload)
            return
        ip = self._names.get(target.host)
        if ip is not None:
            self._send_to_name(target.host.lower(), ip, target.port, payload)
        else:
            self._resolve_then_send(target.host.lower(), target.port, payload)

    def _send_to_target(self, ip: str, port: int, payload: bytes) -> None:
        outbound = self._outbound.get(_family_of(ip))
        if outbound is None or outbound[0].is_closing():
            self._drop(Drop.NO_ROUTE)
            return
        transport, side = outbound
        if side.congested:
            self._drop(Drop.CONGESTED)
            return
        key = (ip, port)
        if key in self._contacted:
            self._contacted.move_to_end(key)
        else:
            self._contacted[key] = UdpHeader(0, Address.from_host(ip, port)).encode()
            if len(self._contacted) > _CONTACTED_MAX:
                self._contacted.popitem(last=False)
        if self.counters.first_target is None:
            self.counters.first_target = str(Address.from_host(ip, port))
        self.counters.datagrams_from_client += 1
        self.counters.bytes_from_client += len(payload)
        transport.sendto(payload, _sockaddr(ip, port))

    def _send_to_name(self, name: str, ip: str, port: int, payload: bytes) -> None:
        if self._allow_resolved is not None and not self._allow_resolved(name, ip, port):
            self._drop(Drop.NOT_ALLOWED)
            return
        self._send_to_target(ip, port, payload)

    def _resolve_then_send(self, name: str, port: int, payload: bytes) -> None:
        waiting = self._waiting.get(name)
        if waiting is None:
            if len(self._waiting) >= _NAMES_RESOLVING_MAX:
                self._drop(Drop.UNRESOLVED)
                return
            waiting = self._waiting[name] = []
            task = asyncio.get_running_loop().create_task(self._resolve(name))
            self._resolving.add(task)
            task.add_done_callback(self._resolving.discard)
        if len(waiting) >= _DATAGRAMS_WAITING_PER_NAME:
            self._drop(Drop.UNRESOLVED)
            return
        waiting.append((port, payload))

    async def _resolve(self, name: str) -> None:
        loop = asyncio.get_running_loop()
        ip: str | None = None
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT_SECONDS):
                infos = await loop.getaddrinfo(name, None, type=socket.SOCK_DGRAM)
            # The resolver's order, restricted to the families we have a socket for.
            for family, _, _, _, sockaddr in infos:
                if family in self._outbound:
                    ip = normalise_host(str(sockaddr[0]))
                    break
        except (OSError, ValueError) as error:  # gaierror, timeout, a name IDNA cannot encode
            log.debug("cannot resolve %r: %s", name, error)
        waiting = self._waiting.pop(name, [])
        if ip is None:
            self._drop(Drop.UNRESOLVED, len(waiting))
            return
        self._names.put(name, ip)
        for port, payload in waiting:
            self._send_to_name(name, ip, port, payload)

    # --- target → client ------------------------------------------------------------------

    def from_target(self, data: bytes, addr: tuple[str, int]) -> None:
        ip, port = normalise_host(addr[0]), addr[1]
        # Only replies from where the client sent to: address- and port-dependent filtering,
        # as a NAT does, so the relay port is not an open door for anyone who learns it.
        header = self._contacted.get((ip, port))
        if header is None or self._client is None:
            self._drop(Drop.UNSOLICITED)
            return
        client, side = self._client
        if side.congested or client.is_closing():
            self._drop(Drop.CONGESTED)
            return
        self._last_activity = asyncio.get_running_loop().time()
        self.counters.datagrams_to_client += 1
        self.counters.bytes_to_client += len(data)
        # build_datagram(), with the header of this target built once.
        client.sendto(header + data, _sockaddr(self._client_host, self._client_port))

    def send_failed(self, error: Exception) -> None:
        log.debug("UDP send failed: %s", error)
        self._drop(Drop.SEND_FAILED)

    def _drop(self, reason: Drop, count: int = 1) -> None:
        if count:
            self.counters.dropped[reason] += count


class UdpCommand:
    """The UDP ASSOCIATE request (RFC 1928 §7), a part of ClientConnection."""

    association: UdpAssociation | None

    async def _associate(
        self: ClientParts, transport: asyncio.Transport, declared: Address, record: ConnectionRecord
    ) -> None:
        """RFC 1928 §7 UDP ASSOCIATE: open the relay, reply with its address, relay until the
        control connection closes or the association is idle too long."""
        egress = self._egress()
        association = UdpAssociation(
            client_host=record.client_host,
            # DST.ADDR/DST.PORT: where the client will send from, zeros if it does not know.
            # Only the port is used; datagrams must come from the control connection's IP.
            client_port=declared.port,
            idle_timeout_seconds=self._settings.udp_idle_timeout_seconds,
            allow=self._datagram_allowed,
            allow_resolved=self._resolved_datagram_allowed,
            source=None if egress is None else egress.source_for,
        )
        try:
            bound = await association.open(transport.get_extra_info("sockname")[0])
        except OSError as error:
            reply = reply_for_error(error)
            if has_egress_failure(error):
                client_log.warning("%s: UDP ASSOCIATE: %s", record.client, error)
            client_log.info("%s: UDP ASSOCIATE failed: %s (%s)", record.client, reply.name, error)
            self._reply(transport, reply, record)
            record.outcome = Outcome.ERROR
            return
        self.association = association
        counters = association.counters
        record.live_counts = lambda: (counters.bytes_from_client, counters.bytes_to_client)
        try:
            self._reply(transport, Reply.SUCCEEDED, record, bound)
            _, client_eof = self._conn.trailing_data  # nothing more is defined on this stream
            end = await association.run(transport, client_eof)
            closed = end is AssociationEnd.CLOSED
            record.outcome = Outcome.CLOSED if closed else Outcome.IDLE_TIMEOUT
        finally:
            await association.aclose()
            counters = association.counters
            record.dialed = counters.first_target
            record.datagrams_from_client = counters.datagrams_from_client
            record.datagrams_to_client = counters.datagrams_to_client
            record.bytes_from_client = counters.bytes_from_client
            record.bytes_to_client = counters.bytes_to_client
            record.datagrams_dropped = counters.dropped_total

    def _datagram_allowed(self: ClientParts, target: Address) -> bool:
        """The policy for one datagram's destination (command udp). A name is checked as a
        name here; the association checks the address it resolves to as well."""
        username = None if self.user is None else self.user.username
        verdict = self._access.policy.check_host(
            username, Command.UDP_ASSOCIATE, target.host, target.port
        )
        return verdict.allowed

    def _resolved_datagram_allowed(self: ClientParts, name: str, ip: str, port: int) -> bool:
        return self._allows(Command.UDP_ASSOCIATE, name, ip, port)
