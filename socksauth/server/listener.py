"""ProxyServer: listeners, the registry of live clients, and a graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import os
import socket
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from uuid import UUID

from socksauth.auth.authenticator import Authenticator
from socksauth.config import ListenAddress, Settings
from socksauth.connection_record import ConnectionObserver
from socksauth.errors import ConfigError
from socksauth.logs import get_logger
from socksauth.server.access import Access, watch
from socksauth.server.client import ClientConnection
from socksauth.server.outbound import Dialer
from socksauth.store.interfaces import UserRecord

log = get_logger("server")

# Connections the kernel queues before accept(): bursts of clients (crawlers, benchmarks)
# must not see refusals while the loop is busy.
LISTEN_BACKLOG = 4096


# What a listen address may look like, for the error that says it does not work.
LISTEN_FORMS = "expected HOST:PORT, [IPv6]:PORT or :PORT, HOST an address or a resolvable name"


def resolve_listen(address: ListenAddress, setting: str = "listen") -> list[Any]:
    """getaddrinfo() for listening on ``address``.

    Raises:
        ConfigError: the host does not resolve (``setting`` names the option).
    """
    try:
        return socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except (socket.gaierror, UnicodeError) as error:
        reason = error.strerror if isinstance(error, socket.gaierror) else "not a valid name"
        raise ConfigError(
            f"{setting}: cannot resolve {address.host!r} ({reason}); {LISTEN_FORMS}"
        ) from None


@contextlib.contextmanager
def listen_errors(address: ListenAddress, setting: str = "listen") -> Iterator[None]:
    """Binding errors as one line naming the setting and the address: a host that does not
    resolve is a ConfigError (bad input); a port in use, an address not on this machine or a
    privileged port stay OSErrors (the machine refuses), their message naming the address."""
    try:
        yield
    except socket.gaierror as error:
        raise ConfigError(
            f"{setting}: cannot resolve {address.host!r} ({error.strerror}); {LISTEN_FORMS}"
        ) from None
    except OSError as error:
        if error.errno is None:
            raise
        raise OSError(
            error.errno, f"{setting}: cannot listen on {address}: {os.strerror(error.errno)}"
        ) from None


def check_listen_free(settings: Settings) -> None:
    """Bind (and close again) each listen address as the proxy will, so that a port in use
    or a host that does not resolve is one line before anything else has started.

    Raises:
        ConfigError, OSError: as listen_errors() says.
    """
    for address in settings.listen:
        seen: set[tuple[int, object]] = set()
        for family, _, _, _, sockaddr in resolve_listen(address):
            if (family, sockaddr[0]) in seen:
                continue
            seen.add((family, sockaddr[0]))
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                with listen_errors(address):
                    sock.bind(sockaddr)


def bind_listeners(settings: Settings, copies: int) -> list[list[socket.socket]]:
    """``copies`` sets of listening sockets, all on the same addresses and ports.

    Each worker process gets one set; SO_REUSEPORT makes the kernel spread new connections
    across them. Port 0 is resolved by the first socket, the others bind the same port.
    """
    sets: list[list[socket.socket]] = [[] for _ in range(copies)]
    for address in settings.listen:
        infos = resolve_listen(address)
        seen: set[tuple[int, object]] = set()
        port = address.port
        for family, _, _, _, sockaddr in infos:
            if (family, sockaddr[0]) in seen:
                continue
            seen.add((family, sockaddr[0]))
            for worker_sockets in sets:
                sock = socket.socket(family, socket.SOCK_STREAM)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                    if family == socket.AF_INET6:
                        # As asyncio does: [::] means IPv6 only; list 0.0.0.0 for IPv4 too.
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    with listen_errors(address):
                        sock.bind((sockaddr[0], port, *sockaddr[2:]))
                    sock.listen(LISTEN_BACKLOG)
                    sock.setblocking(False)
                except BaseException:
                    sock.close()
                    raise
                port = sock.getsockname()[1]
                worker_sockets.append(sock)
    return sets


@dataclass(slots=True)
class _Listener:
    """One configured listen address and the servers that accept on it (one per address
    family); ``address`` is replaced when a reload changes its client networks."""

    address: ListenAddress | None  # None: a pre-bound socket no configured address names
    servers: list[asyncio.Server] = field(default_factory=list)


class ProxyServer:
    """Accepts clients on every listen address and runs one ClientConnection task per client."""

    def __init__(
        self,
        settings: Settings,
        authenticator: Authenticator,
        observer: ConnectionObserver | None = None,
        listen_sockets: Sequence[socket.socket] = (),
        access: Access | None = None,
    ) -> None:
        """``listen_sockets``: already bound sockets to serve on instead of ``settings.listen``
        (worker processes share one port through SO_REUSEPORT). ``access``: destination
        policy and limits; None applies neither (tests of the handshake alone)."""
        self._access = access
        self._watch: asyncio.Task[None] | None = None
        self._quotas: asyncio.Task[None] | None = None
        self._settings = settings
        self._listen_sockets = tuple(listen_sockets)
        self._authenticator = authenticator
        self._observer = observer
        self._dialer = Dialer(settings.connect_timeout_seconds)
        # By configured (host, port): a reload keeps, adds and closes listeners by this key.
        self._listeners: dict[tuple[str, int], _Listener] = {}
        # Closed by a reload; awaited at stop.
        self._retired: list[asyncio.Server] = []
        self._clients: dict[asyncio.Task[object], ClientConnection] = {}
        self.bound: list[ListenAddress] = []

    @property
    def settings(self) -> Settings:
        """The settings in force (replaced by a reload)."""
        return self._settings

    @property
    def authenticator(self) -> Authenticator:
        """Who checks logins (and throttles them)."""
        return self._authenticator

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._listen_sockets:
            for sock in self._listen_sockets:
                address = self._listener_of(sock)
                key = (address.host, address.port) if address else sock.getsockname()[:2]
                listener = self._listeners.setdefault(key, _Listener(address))
                accept = functools.partial(self._accept, listener)
                listener.servers.append(await _serve_on(loop, accept, sock))
        else:
            for address in self._settings.listen:
                key = (address.host, address.port)
                self._listeners[key] = await self._open(address, self._settings)
        # Workers serve sockets their supervisor bound and already announced.
        self._update_bound(logging.DEBUG if self._listen_sockets else logging.INFO)
        if self._access is not None:
            self._start_watch()
            self._quotas = asyncio.get_running_loop().create_task(
                self._access.quotas.run(self._clients.values), name="quotas"
            )

    async def _open(self, address: ListenAddress, settings: Settings) -> _Listener:
        """Listen on ``address``: a worker binds it with SO_REUSEPORT, as its siblings do."""
        loop = asyncio.get_running_loop()
        listener = _Listener(address)
        accept = functools.partial(self._accept, listener)
        try:
            if self._listen_sockets:
                one = dataclasses.replace(settings, listen=(address,))
                for sock in bind_listeners(one, 1)[0]:
                    listener.servers.append(await _serve_on(loop, accept, sock))
            else:
                resolve_listen(address)
                with listen_errors(address):
                    server = await loop.create_server(
                        accept,
                        host=address.host,
                        port=address.port,
                        reuse_address=True,
                        backlog=LISTEN_BACKLOG,
                    )
                listener.servers.append(server)
        except BaseException:
            for server in listener.servers:
                server.close()
            raise
        return listener

    def _update_bound(self, level: int) -> None:
        """``bound`` from the listeners; logs each address not listed before."""
        before = set(self.bound)
        self.bound = []
        for listener in self._listeners.values():
            for server in listener.servers:
                for sock in server.sockets:
                    host, port = sock.getsockname()[:2]
                    bound = ListenAddress(host=host, port=port)
                    self.bound.append(bound)
                    if bound not in before:
                        log.log(level, "listening on %s", bound)
        if self._access is not None:
            self._access.set_own_endpoints([(b.host, b.port) for b in self.bound])

    def _start_watch(self) -> None:
        assert self._access is not None
        # Always watched, also without periodic account checks: the cached accounts must
        # be dropped when the store reports a change.
        self._watch = asyncio.get_running_loop().create_task(
            watch(
                self._access,
                self._live_users,
                self._settings.account_check_seconds,
                poll_seconds=self._settings.change_poll_seconds,
                kill=self.kill,
            ),
            name="account-watch",
        )

    async def _stop_watch(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
            self._watch = None

    async def _stop_quotas(self) -> None:
        """After the last client: stop the quota rounds and write the last bytes counted
        (they count on after a restart)."""
        if self._quotas is None or self._access is None:
            return
        self._quotas.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._quotas
        self._quotas = None
        try:
            await self._access.quotas.flush()
        except Exception:
            log.exception("could not write the last traffic counts for quotas")

    async def reload(self, settings: Settings) -> None:
        """Serve with ``settings`` from now on; established clients keep theirs.

        Listeners: new addresses are bound, removed ones closed (their clients stay), kept
        ones keep their sockets (a changed client network list applies at the next accept).
        New clients get the new timeouts, limits and policy; the caps count the clients
        already connected.

        Raises:
            ConfigError, OSError: a new address cannot be listened on; nothing was changed.
        """
        wanted = {(address.host, address.port): address for address in settings.listen}
        added = [address for key, address in wanted.items() if key not in self._listeners]
        for address in added:
            if self._listen_sockets and address.port == 0:
                # Each worker would get a port of its own.
                raise ConfigError(f"listen {address}: a new address needs a fixed port")
        opened: dict[tuple[str, int], _Listener] = {}
        try:
            for address in added:
                opened[(address.host, address.port)] = await self._open(address, settings)
        except BaseException:
            for listener in opened.values():
                for server in listener.servers:
                    server.close()
            raise
        for key, listener in list(self._listeners.items()):
            if key in wanted:
                listener.address = wanted[key]
            elif listener.address is not None:
                for server in listener.servers:
                    server.close()
                    self._retired.append(server)
                del self._listeners[key]
                log.info("stopped listening on %s", listener.address)
        self._listeners.update(opened)
        previous, self._settings = self._settings, settings
        self._dialer = Dialer(settings.connect_timeout_seconds)
        self._update_bound(logging.INFO)
        if self._access is not None:
            self._access.use_settings(settings)
            intervals = ("account_check_seconds", "change_poll_seconds")
            if any(getattr(previous, n) != getattr(settings, n) for n in intervals):
                await self._stop_watch()
                self._start_watch()

    def _listener_of(self, sock: socket.socket) -> ListenAddress | None:
        """The listen address a pre-bound socket serves (for its client networks)."""
        host, port = sock.getsockname()[:2]
        for address in self._settings.listen:
            if address.port in (0, port) and address.host in (host, "0.0.0.0", "::", ""):
                return address
        return None

    def _live_users(self) -> list[tuple[UserRecord, Callable[[str], None]]]:
        return [
            (client.user, client.end)
            for client in self._clients.values()
            if client.user is not None
        ]

    def kill(self, requested: Mapping[UUID, str]) -> int:
        """End the clients whose audit ids are in ``requested`` (id → who asked); how many
        of them were here."""
        killed = 0
        for client in list(self._clients.values()):
            record = client.record
            if record is not None and record.audit_id is not None:
                by = requested.get(record.audit_id)
                if by is not None:
                    client.kill(by)
                    killed += 1
        return killed

    def _accept(self, listener: _Listener) -> asyncio.BaseProtocol:
        client = ClientConnection(
            self._settings,
            self._authenticator,
            self._dialer,
            self._observer,
            self._access,
            listener.address,
        )
        task = asyncio.get_running_loop().create_task(client.run())
        self._clients[task] = client
        task.add_done_callback(self._forget)
        return client.protocol

    def _forget(self, task: asyncio.Task[object]) -> None:
        self._clients.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("client task failed", exc_info=task.exception())

    @property
    def access(self) -> Access | None:
        """The policy and limits this server applies (None: none)."""
        return self._access

    @property
    def listening(self) -> bool:
        """Whether every listener accepts clients (False once a stop has begun)."""
        servers = [server for listener in self._listeners.values() for server in listener.servers]
        return bool(servers) and all(server.is_serving() for server in servers)

    @property
    def active_clients(self) -> int:
        return len(self._clients)

    @property
    def in_handshake(self) -> int:
        """Clients that have not had the reply to their request yet."""
        return sum(1 for client in self._clients.values() if client.in_handshake)

    async def stop(
        self,
        grace_seconds: float = 0.0,
        *,
        finish_handshakes: bool = False,
        hurry: asyncio.Event | None = None,
    ) -> None:
        """Stop accepting; with ``finish_handshakes``, let clients in the handshake finish it
        (each within its handshake and connect timeouts); give tunnels, associations and
        bindings ``grace_seconds`` to end on their own; close the rest (outcome shutdown).

        ``hurry``, once set, ends the waiting: everything still open is closed at once.
        """
        loop = asyncio.get_running_loop()
        started = loop.time()
        servers = [server for listener in self._listeners.values() for server in listener.servers]
        for server in servers:
            server.close()
        await self._stop_watch()
        if self._clients and finish_handshakes:
            waiting = [c.handshake_over() for c in self._clients.values() if c.in_handshake]
            if waiting:
                log.info("stopping: %d client(s) in the handshake may finish it", len(waiting))
                limit = self._settings.handshake_timeout_seconds
                await _wait_for(waiting, limit + self._settings.connect_timeout_seconds, hurry)
        if self._clients and grace_seconds > 0 and not (hurry is not None and hurry.is_set()):
            log.info(
                "stopping: %d connection(s) open; they have %.1f s to end",
                len(self._clients),
                grace_seconds,
            )
            await _wait_for(list(self._clients), grace_seconds, hurry)
        left = len(self._clients)
        if left:
            log.info("stopping: closing %d connection(s) still open", left)
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        # Only now: since Python 3.12 wait_closed() also waits for every accepted connection.
        for server in [*servers, *self._retired]:
            await server.wait_closed()
        await self._stop_quotas()
        if finish_handshakes:
            log.info(
                "stopped in %.2f s; %d connection(s) closed by the shutdown",
                loop.time() - started,
                left,
            )

    async def __aenter__(self) -> ProxyServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


async def _wait_for(
    waiters: Collection[asyncio.Future[Any]], seconds: float, hurry: asyncio.Event | None
) -> None:
    """Until every one of ``waiters`` is done, ``seconds`` have passed, or ``hurry`` is set.
    The waiters themselves are neither cancelled nor awaited."""
    everything = asyncio.ensure_future(asyncio.wait(waiters))
    watchers: list[asyncio.Future[Any]] = [everything]
    if hurry is not None:
        watchers.append(asyncio.ensure_future(hurry.wait()))
    try:
        await asyncio.wait(watchers, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for watcher in watchers:
            watcher.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)


async def _serve_on(
    loop: asyncio.AbstractEventLoop, accept: Callable[[], asyncio.BaseProtocol], sock: socket.socket
) -> asyncio.Server:
    """Serve on a socket already bound.

    create_server listens again on a given socket, with a backlog of 100 unless told: a
    burst of connections beyond that (a crawler opening 200 at once) loses SYNs, and each
    lost one costs its client a 1 s retransmission.
    """
    return await loop.create_server(accept, sock=sock, backlog=LISTEN_BACKLOG)
