"""ProxyServer: listeners, the registry of live clients, and a graceful stop."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Callable, Sequence
from types import TracebackType

from socksauth.auth.authenticator import Authenticator
from socksauth.config import ListenAddress, Settings
from socksauth.logs import get_logger
from socksauth.server.access import Access, watch
from socksauth.server.client import ClientConnection, ConnectionObserver
from socksauth.server.outbound import Dialer
from socksauth.store.interfaces import UserRecord

log = get_logger("server")

# Connections the kernel queues before accept(): bursts of clients (crawlers, benchmarks)
# must not see refusals while the loop is busy.
LISTEN_BACKLOG = 4096


def bind_listeners(settings: Settings, copies: int) -> list[list[socket.socket]]:
    """``copies`` sets of listening sockets, all on the same addresses and ports.

    Each worker process gets one set; SO_REUSEPORT makes the kernel spread new connections
    across them. Port 0 is resolved by the first socket, the others bind the same port.
    """
    sets: list[list[socket.socket]] = [[] for _ in range(copies)]
    for address in settings.listen:
        infos = socket.getaddrinfo(
            address.host, address.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
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
                    sock.bind((sockaddr[0], port, *sockaddr[2:]))
                    sock.listen(LISTEN_BACKLOG)
                    sock.setblocking(False)
                except BaseException:
                    sock.close()
                    raise
                port = sock.getsockname()[1]
                worker_sockets.append(sock)
    return sets


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
        self._settings = settings
        self._listen_sockets = tuple(listen_sockets)
        self._authenticator = authenticator
        self._observer = observer
        self._dialer = Dialer(settings.connect_timeout_seconds)
        self._servers: list[asyncio.Server] = []
        self._clients: dict[asyncio.Task[object], ClientConnection] = {}
        self.bound: list[ListenAddress] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._listen_sockets:
            for sock in self._listen_sockets:
                accept = functools.partial(self._accept, self._listener_of(sock))
                self._servers.append(await loop.create_server(accept, sock=sock))
        else:
            for address in self._settings.listen:
                self._servers.append(
                    await loop.create_server(
                        functools.partial(self._accept, address),
                        host=address.host,
                        port=address.port,
                        reuse_address=True,
                        backlog=LISTEN_BACKLOG,
                    )
                )
        for server in self._servers:
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                bound = ListenAddress(host=host, port=port)
                self.bound.append(bound)
                # Workers serve sockets their supervisor bound and already announced.
                log.log(
                    logging.DEBUG if self._listen_sockets else logging.INFO,
                    "listening on %s",
                    bound,
                )
        if self._access is not None:
            self._access.set_own_endpoints([(b.host, b.port) for b in self.bound])
            # Always watched, also without periodic account checks: the cached accounts must
            # be dropped when the store reports a change.
            self._watch = loop.create_task(
                watch(
                    self._access,
                    self._live_users,
                    self._settings.account_check_seconds,
                    poll_seconds=self._settings.change_poll_seconds,
                ),
                name="account-watch",
            )

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

    def _accept(self, listener: ListenAddress | None) -> asyncio.BaseProtocol:
        client = ClientConnection(
            self._settings,
            self._authenticator,
            self._dialer,
            self._observer,
            self._access,
            listener,
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
    def active_clients(self) -> int:
        return len(self._clients)

    async def stop(self, grace_seconds: float = 0.0) -> None:
        """Stop accepting; give tunnels ``grace_seconds`` to finish; cancel the rest."""
        for server in self._servers:
            server.close()
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._clients and grace_seconds > 0:
            await asyncio.wait(list(self._clients), timeout=grace_seconds)
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        # Only now: since Python 3.12 wait_closed() also waits for every accepted connection.
        for server in self._servers:
            await server.wait_closed()

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
