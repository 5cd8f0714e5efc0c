"""ProxyServer: listeners, the registry of live clients, and a graceful stop."""

from __future__ import annotations

import asyncio
from types import TracebackType

from socksauth.auth.authenticator import Authenticator
from socksauth.config import ListenAddress, Settings
from socksauth.logs import get_logger
from socksauth.server.client import ClientConnection, ConnectionObserver
from socksauth.server.outbound import Dialer

log = get_logger("server")


class ProxyServer:
    """Accepts clients on every listen address and runs one ClientConnection task per client."""

    def __init__(
        self,
        settings: Settings,
        authenticator: Authenticator,
        observer: ConnectionObserver | None = None,
    ) -> None:
        self._settings = settings
        self._authenticator = authenticator
        self._observer = observer
        self._dialer = Dialer(settings.connect_timeout_seconds)
        self._servers: list[asyncio.Server] = []
        self._clients: dict[asyncio.Task[object], ClientConnection] = {}
        self.bound: list[ListenAddress] = []

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        for address in self._settings.listen:
            server = await loop.create_server(
                self._accept,
                host=address.host,
                port=address.port,
                reuse_address=True,
                backlog=1024,
            )
            self._servers.append(server)
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                bound = ListenAddress(host=host, port=port)
                self.bound.append(bound)
                log.info("listening on %s", bound)

    def _accept(self) -> asyncio.BaseProtocol:
        client = ClientConnection(self._settings, self._authenticator, self._dialer, self._observer)
        task = asyncio.get_running_loop().create_task(client.run())
        self._clients[task] = client
        task.add_done_callback(self._forget)
        return client.protocol

    def _forget(self, task: asyncio.Task[object]) -> None:
        self._clients.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("client task failed", exc_info=task.exception())

    @property
    def active_clients(self) -> int:
        return len(self._clients)

    async def stop(self, grace_seconds: float = 0.0) -> None:
        """Stop accepting; give tunnels ``grace_seconds`` to finish; cancel the rest."""
        for server in self._servers:
            server.close()
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
