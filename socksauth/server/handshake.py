"""HandshakeProtocol: the asyncio protocol that feeds a client's bytes to the sans-IO core
(SOCKS5 or, by the first byte, HTTP) while the handshake runs, a PROXY header first."""

from __future__ import annotations

import asyncio
from typing import cast

from socksauth import protocol
from socksauth.config import Settings
from socksauth.protocol import ServerConnection
from socksauth.protocol.detect import Kind, detect
from socksauth.protocol.http import ProxyConnection
from socksauth.protocol.proxy_header import ProxyHeader, ProxyHeaderReader, starts_like_header

# Handshake reads are small; data beyond this stays in the kernel until we ask for it.
_HANDSHAKE_READ_BYTES = 4096
# The handshake's read buffer before the first read and after the handshake: a tunnel lives
# for hours and never reads through this protocol again, so it must not keep 4 KiB for it.
_NO_BUFFER = memoryview(bytearray(0))


class HandshakeProtocol(asyncio.BufferedProtocol):
    """Feeds the client's bytes to the sans-IO core while the handshake runs.

    Reading is paused except while the handler waits for data, so whatever a client
    pipelines stays in the kernel's socket buffer, not in our memory.
    """

    def __init__(
        self,
        conn: ServerConnection,
        load_balancers: Settings | None = None,
        *,
        http_enabled: bool = False,
    ) -> None:
        """``load_balancers``: the settings when proxy_protocol_networks is set, else None;
        ``http_enabled``: the first byte decides between SOCKS5 and an HTTP proxy client."""
        self._conn = conn
        # Where the client's bytes go. With HTTP on, the first read picks the parser from
        # its first byte (_detect) and sends everything there, that read included; without,
        # straight to the SOCKS5 core as always.
        self._receive = self._detect if http_enabled else conn.receive_data
        self.kind: Kind | None = None if http_enabled else Kind.SOCKS5
        self.http: ProxyConnection | None = None
        self._writable: asyncio.Future[None] | None = None
        self._load_balancers = load_balancers
        self._view = _NO_BUFFER
        self._last_read = 0
        # Set while a load balancer's PROXY header is awaited: bytes go there first.
        self._header_reader: ProxyHeaderReader | None = None
        self.from_load_balancer = False
        self.proxy_header: ProxyHeader | None = None
        self.transport: asyncio.Transport | None = None
        self.connected: asyncio.Future[asyncio.Transport] = (
            asyncio.get_running_loop().create_future()
        )
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self.lost = False
        self.eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.transport.pause_reading()
        if self._load_balancers is not None:
            # Decided here, before the first read: uvloop may deliver data right after
            # connection_made, and a load balancer's first bytes are its header.
            peer = transport.get_extra_info("peername")
            if peer and self._load_balancers.is_load_balancer(peer[0]):
                self.from_load_balancer = True
                self._header_reader = ProxyHeaderReader()
        self.connected.set_result(self.transport)

    def get_buffer(self, sizehint: int) -> memoryview:
        if not self._view:
            self._view = memoryview(bytearray(_HANDSHAKE_READ_BYTES))
        return self._view

    def release_buffer(self) -> None:
        """Drop the read buffer (the handshake is over); a later read allocates a new one."""
        self._view = _NO_BUFFER

    def buffer_updated(self, nbytes: int) -> None:
        assert self.transport is not None
        self.transport.pause_reading()
        self._last_read = nbytes
        try:
            if self._header_reader is None:
                self._receive(self._view[:nbytes])
            else:
                self._receive_header(self._view[:nbytes])
        except protocol.ProtocolError as error:
            self._error = error
        self._wake()

    def _receive_header(self, data: memoryview) -> None:
        assert self._header_reader is not None
        header = self._header_reader.receive_data(data)
        if header is not None:
            self._header_reader = None
            self.proxy_header = header
            if header.trailing_data:
                self._receive(header.trailing_data)

    def _detect(self, data: bytes | memoryview) -> None:
        """The first bytes: SOCKS5 (or garbage, which the SOCKS5 core refuses as before) or
        HTTP; they and all that follow go to that protocol's parser, in order."""
        kind = detect(data[0]) if data else Kind.SOCKS5
        if kind is Kind.HTTP and starts_like_header(data):
            kind = Kind.SOCKS5  # "PROXY …" from a load balancer we do not know: refused as such
        self.kind = kind
        if kind is Kind.HTTP:
            self.http = ProxyConnection()
            self._receive = self.http.receive_data
        else:
            self._receive = self._conn.receive_data
        self._receive(data)

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._writable is not None:
            if not self._writable.done():
                self._writable.set_result(None)
            self._writable = None

    async def drain(self) -> None:
        """Returns once the transport takes more (HTTP forwarding's flow control)."""
        if self._writable is not None:
            await self._writable

    def last_read_was_proxy_header(self) -> bool:
        """Whether the most recent read began like a PROXY header (for a clearer error when
        a load balancer that is not in proxy_protocol_networks sends one)."""
        return starts_like_header(self._view[: self._last_read])

    def _end_of_stream(self) -> None:
        try:
            if self._header_reader is not None:
                self._receive_header(self._view[:0])
            self._receive(b"")
        except protocol.ProtocolError as error:
            self._error = error
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._end_of_stream()
        return True  # keep the transport open: a half-closed client still gets its reply

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.resume_writing()
        self._end_of_stream()  # harmless if the FIN came first

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait_for_data(self) -> None:
        if self._error is not None:
            raise self._error
        assert self.transport is not None
        self._waiter = asyncio.get_running_loop().create_future()
        if not self.lost:
            self.transport.resume_reading()
        else:
            self._waiter.set_result(None)
        await self._waiter
        self._waiter = None
        if self._error is not None:
            raise self._error
