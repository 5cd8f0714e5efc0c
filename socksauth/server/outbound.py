"""Dialer: resolve and connect to a target (Happy Eyeballs); reply_for_error: errno → Reply."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from socksauth.protocol import Address, AddressType, Reply

# RFC 8305 §5: "A simple implementation can have a fixed delay … The recommended value … is
# 250 milliseconds."
HAPPY_EYEBALLS_DELAY_SECONDS = 0.25

_REPLY_BY_ERRNO: dict[int, Reply] = {
    errno.ECONNREFUSED: Reply.CONNECTION_REFUSED,
    errno.ENETUNREACH: Reply.NETWORK_UNREACHABLE,
    errno.ENETDOWN: Reply.NETWORK_UNREACHABLE,
    errno.EAFNOSUPPORT: Reply.NETWORK_UNREACHABLE,
    errno.EADDRNOTAVAIL: Reply.NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: Reply.HOST_UNREACHABLE,
    errno.EHOSTDOWN: Reply.HOST_UNREACHABLE,
    errno.ETIMEDOUT: Reply.TTL_EXPIRED,
    errno.EACCES: Reply.CONNECTION_NOT_ALLOWED,
    errno.EPERM: Reply.CONNECTION_NOT_ALLOWED,
}

# When every address of a name failed differently, the reply names the most telling failure:
# a host that answered "refused" says more than an unreachable second address family.
_REPLY_PRIORITY = (
    Reply.CONNECTION_REFUSED,
    Reply.TTL_EXPIRED,
    Reply.HOST_UNREACHABLE,
    Reply.CONNECTION_NOT_ALLOWED,
    Reply.NETWORK_UNREACHABLE,
    Reply.GENERAL_FAILURE,
)


def reply_for_error(error: BaseException) -> Reply:
    """The RFC 1928 reply for a failed resolve or connect, decided by type and errno only."""
    if isinstance(error, ConnectFailed):
        return min(
            (reply_for_error(e) for e in error.errors),
            key=_REPLY_PRIORITY.index,
            default=Reply.GENERAL_FAILURE,
        )
    if isinstance(error, EgressUnavailable):
        # Our fault, not the target's: RFC 1928's "general SOCKS server failure".
        return Reply.GENERAL_FAILURE
    if isinstance(error, socket.gaierror):
        # Every resolver failure (EAI_NONAME, EAI_AGAIN, EAI_FAIL, …) means the name gave us
        # no host to reach: RFC 1928's "Host unreachable".
        return Reply.HOST_UNREACHABLE
    if isinstance(error, TimeoutError):
        return Reply.TTL_EXPIRED
    if isinstance(error, OSError) and error.errno is not None:
        return _REPLY_BY_ERRNO.get(error.errno, Reply.GENERAL_FAILURE)
    return Reply.GENERAL_FAILURE


class ConnectFailed(OSError):
    """Every address of the target failed; ``errors`` holds each attempt's error."""

    def __init__(self, target: str, errors: Sequence[BaseException]) -> None:
        super().__init__(f"could not connect to {target}: " + "; ".join(map(str, errors)))
        self.errors = tuple(errors)


class EgressUnavailable(OSError):
    """The egress address chosen for a request cannot be bound (it vanished from this host,
    or the user's pools are unknown): reply 0x01 and a warning."""


def has_egress_failure(error: BaseException) -> bool:
    """Whether ``error`` (or one of a ConnectFailed's attempts) is an EgressUnavailable."""
    if isinstance(error, ConnectFailed):
        return any(isinstance(attempt, EgressUnavailable) for attempt in error.errors)
    return isinstance(error, EgressUnavailable)


class NotAllowed(PermissionError):
    """The destination policy allowed none of the target's addresses (reply 0x02)."""


@dataclass(frozen=True, slots=True)
class ResolvedAddress:
    family: socket.AddressFamily
    sockaddr: tuple[str, int] | tuple[str, int, int, int]


class Dialer:
    """Opens outbound TCP connections for CONNECT."""

    def __init__(self, connect_timeout_seconds: float) -> None:
        self._timeout = connect_timeout_seconds

    async def resolve(self, target: Address) -> list[ResolvedAddress]:
        """The addresses to try, in Happy Eyeballs order (families interleaved)."""
        loop = asyncio.get_running_loop()
        if target.type is AddressType.IPV4:
            return [ResolvedAddress(socket.AF_INET, (target.host, target.port))]
        if target.type is AddressType.IPV6:
            return [ResolvedAddress(socket.AF_INET6, (target.host, target.port, 0, 0))]
        infos = await loop.getaddrinfo(
            target.host, target.port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP
        )
        return _interleave(
            [ResolvedAddress(socket.AddressFamily(f), sa) for f, _, _, _, sa in infos]  # type: ignore[arg-type]
        )

    async def connect(
        self,
        target: Address,
        allow: Callable[[ResolvedAddress], bool] | None = None,
        source: Callable[[int], str | None] | None = None,
    ) -> socket.socket:
        """A connected non-blocking socket to ``target``; raises for reply_for_error.

        ``allow`` is asked about every resolved address; only those it allows are tried, so
        the address connected to is the address checked (a second lookup could answer
        differently). NotAllowed when it allows none. ``source`` gives the local address to
        bind for an address family (the user's egress); families it has none for are not
        tried.
        """
        async with asyncio.timeout(self._timeout):
            addresses, sources = await self._candidates(target, allow, source)
            return await happy_eyeballs(addresses, str(target), sources)

    async def open(
        self,
        target: Address,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        allow: Callable[[ResolvedAddress], bool] | None = None,
        source: Callable[[int], str | None] | None = None,
    ) -> asyncio.Transport:
        """connect(), straight into a transport with ``protocol_factory``'s protocol.

        One address and no egress to bind (an IP literal: nearly every tunnel) is dialled by
        the event loop itself: no socket object, no connect future and no second
        registration of the socket, as create_connection(sock=) after sock_connect() would
        cost.
        """
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._timeout):
            addresses, sources = await self._candidates(target, allow, source)
            if len(addresses) == 1 and not sources and not _scoped(addresses[0]):
                address = addresses[0]
                try:
                    transport, _ = await loop.create_connection(
                        protocol_factory,
                        str(address.sockaddr[0]),
                        int(address.sockaddr[1]),
                        family=address.family,
                    )
                except OSError as failure:
                    raise ConnectFailed(str(target), [failure]) from None
                return transport
            sock = await happy_eyeballs(addresses, str(target), sources)
        return await transport_on(sock, protocol_factory)

    async def _candidates(
        self,
        target: Address,
        allow: Callable[[ResolvedAddress], bool] | None,
        source: Callable[[int], str | None] | None,
    ) -> tuple[list[ResolvedAddress], dict[int, str | None]]:
        """The addresses to try, and the local address to bind per family ({}: none)."""
        if (
            source is not None
            and source(socket.AF_INET) is None
            and source(socket.AF_INET6) is None
        ):
            raise EgressUnavailable(errno.EADDRNOTAVAIL, "no egress address (unknown pool?)")
        addresses = await self.resolve(target)
        if allow is not None:
            permitted = [address for address in addresses if allow(address)]
            if addresses and not permitted:
                raise NotAllowed(errno.EACCES, f"no allowed address for {target}")
            addresses = permitted
        if source is None:
            return addresses, {}
        sources: dict[int, str | None] = {
            family: source(family) for family in (socket.AF_INET, socket.AF_INET6)
        }
        reachable = [address for address in addresses if sources[address.family] is not None]
        if addresses and not reachable:
            raise ConnectFailed(
                str(target),
                [OSError(errno.EAFNOSUPPORT, "no egress address of the target's family")],
            )
        return reachable, sources


async def transport_on(
    sock: socket.socket, protocol_factory: Callable[[], asyncio.BaseProtocol]
) -> asyncio.Transport:
    """A transport with ``protocol_factory``'s protocol over connected ``sock`` (a Happy
    Eyeballs winner, BIND's peer); ``sock`` is closed if that fails."""
    try:
        transport, _ = await asyncio.get_running_loop().create_connection(
            protocol_factory, sock=sock
        )
    except BaseException:
        sock.close()
        raise
    return transport


def _scoped(address: ResolvedAddress) -> bool:
    """An IPv6 address with a zone (link-local): only its sockaddr says which interface."""
    return len(address.sockaddr) == 4 and bool(address.sockaddr[3])


def _interleave(addresses: list[ResolvedAddress]) -> list[ResolvedAddress]:
    """RFC 8305 §4: alternate families, starting with the family the resolver put first."""
    seen: set[tuple[object, ...]] = set()
    unique = []
    for address in addresses:
        key = (address.family, address.sockaddr[:2])
        if key not in seen:
            seen.add(key)
            unique.append(address)
    if not unique:
        return unique
    first = [a for a in unique if a.family == unique[0].family]
    other = [a for a in unique if a.family != unique[0].family]
    ordered: list[ResolvedAddress] = []
    for index in range(max(len(first), len(other))):
        ordered.extend(group[index] for group in (first, other) if index < len(group))
    return ordered


# Linux: bind() picks no port, connect() does, per destination: many tunnels from one egress
# address do not run out of ports the way a port chosen at bind time would.
_IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)


def bind_source(sock: socket.socket, source: str, *, defer_port: bool = True) -> None:
    """Bind ``sock`` to the egress address ``source``; with ``defer_port`` (TCP) the port is
    chosen at connect.

    Raises:
        EgressUnavailable: the address is not (or no longer) on this host.
    """
    if defer_port:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
    try:
        sock.bind((source, 0))
    except OSError as error:
        raise EgressUnavailable(
            error.errno, f"egress address {source}: {error.strerror or error}"
        ) from None


async def _connect_one(address: ResolvedAddress, source: str | None = None) -> socket.socket:
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if source is not None:
            bind_source(sock, source)
        await asyncio.get_running_loop().sock_connect(sock, address.sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


async def happy_eyeballs(
    addresses: Sequence[ResolvedAddress],
    target: str,
    sources: Mapping[int, str | None] | None = None,
) -> socket.socket:
    """Start an attempt, and another each time one fails or the delay passes; first one wins.
    ``sources``: the local address to bind per address family (egress)."""
    sources = sources or {}
    if not addresses:
        raise ConnectFailed(target, [OSError(errno.EHOSTUNREACH, "no address to connect to")])
    if len(addresses) == 1:
        # An IP literal, or a name with one address: nothing to race, so no task and no wait.
        try:
            return await _connect_one(addresses[0], sources.get(addresses[0].family))
        except OSError as failure:
            raise ConnectFailed(target, [failure]) from None
    pending: set[asyncio.Task[socket.socket]] = set()
    errors: list[BaseException] = []
    remaining = list(addresses)
    try:
        while remaining or pending:
            if remaining:
                attempt = remaining.pop(0)
                pending.add(asyncio.create_task(_connect_one(attempt, sources.get(attempt.family))))
            done, _ = await asyncio.wait(
                pending,
                timeout=HAPPY_EYEBALLS_DELAY_SECONDS if remaining else None,
                return_when=asyncio.FIRST_COMPLETED,
            )
            winner: socket.socket | None = None
            for task in done:
                pending.discard(task)
                error = task.exception()
                if error is not None:
                    errors.append(error)
                elif winner is None:
                    winner = task.result()
                else:
                    task.result().close()  # two finished in the same turn: keep one
            if winner is not None:
                return winner
        raise ConnectFailed(target, errors)
    finally:
        # Losers are cancelled; one that connected before its cancellation took effect must
        # not leak its socket.
        for task in pending:
            task.cancel()
            task.add_done_callback(_close_if_connected)


def _close_if_connected(task: asyncio.Task[socket.socket]) -> None:
    if not task.cancelled() and task.exception() is None:
        task.result().close()
