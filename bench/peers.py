"""The local servers the load goes to: sink (discards), source (streams), echo.

They run in a process of their own, on 127.0.0.1 only, so neither the load generator nor the
proxy shares their event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
from multiprocessing.connection import Connection

CHUNK_BYTES = 1 << 20
# A source stops after this much even if nobody closes: a bound, never reached in practice.
SOURCE_LIMIT_BYTES = 64 << 30


class _Sink(asyncio.BufferedProtocol):
    """Reads into one buffer and forgets; closes at the client's FIN (the client waits for it)."""

    def __init__(self) -> None:
        self._view = memoryview(bytearray(CHUNK_BYTES))
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        pass

    def eof_received(self) -> bool:
        return False  # asyncio closes the transport: our FIN tells the client all arrived


class _Source(asyncio.Protocol):
    """Once the client sends a byte, writes at full speed with flow control until the client
    goes (or the bound). Waiting for the client keeps the start of the transfer in its hands."""

    _data = bytes(CHUNK_BYTES)

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.paused = False
        self.sent = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=4 * CHUNK_BYTES)
        self.started = False

    def data_received(self, data: bytes) -> None:
        if not self.started:
            self.started = True
            self._pump()

    def _pump(self) -> None:
        assert self.transport is not None
        while not self.paused and not self.transport.is_closing():
            if self.sent >= SOURCE_LIMIT_BYTES:
                self.transport.close()
                return
            self.transport.write(self._data)
            self.sent += CHUNK_BYTES

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    def eof_received(self) -> bool:
        return False


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    def eof_received(self) -> bool:
        return False


async def _serve(conn: Connection) -> None:
    loop = asyncio.get_running_loop()
    servers = {}
    for name, factory in (("sink", _Sink), ("source", _Source), ("echo", _Echo)):
        servers[name] = await loop.create_server(factory, "127.0.0.1", 0, backlog=4096)
    conn.send({name: s.sockets[0].getsockname()[1] for name, s in servers.items()})
    # Runs until the parent sends anything (or goes away).
    with contextlib.suppress(EOFError):
        await loop.run_in_executor(None, conn.recv)
    for server in servers.values():
        server.close()


def main(conn: Connection) -> None:
    """Process entry point: serve on three ports, send them to the parent, stop when told."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(conn))
    else:
        uvloop.run(_serve(conn))
