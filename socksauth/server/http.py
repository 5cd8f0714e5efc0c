"""HttpExchange: the HTTP proxy side of one client connection, reading request heads,
answering them, and forwarding absolute-form requests to their origin.

ClientConnection (server/client.py) decides from the first byte that a client speaks HTTP,
authenticates it and applies the same policy and limits as to SOCKS5; a CONNECT then becomes
the same relayed tunnel. This module holds what differs: the heads, the responses, and the
request/response loop of plain ``http://`` forwarding with keep-alive to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Awaitable, Callable
from typing import Protocol

import h11

from socksauth.logs import get_logger
from socksauth.protocol import NEED_DATA, PAUSED, Address, AddressType, Reply
from socksauth.protocol.http import (
    ProxyConnection,
    ProxyRequest,
    error_response,
    established_response,
    forwarded_headers,
    status_for,
)
from socksauth.server.limits import TokenBucket

log = get_logger("http")

# Bytes asked of the origin per read while a response is forwarded.
_ORIGIN_READ_BYTES = 64 * 1024


class Reader(Protocol):
    """Where the client's bytes come from (server/handshake.py:HandshakeProtocol)."""

    lost: bool
    eof: bool

    async def wait_for_data(self) -> None: ...

    async def drain(self) -> None:
        """Returns once the client's transport takes more (flow control: a fast origin
        must not fill our memory for a slow client)."""
        ...


class HttpExchange:
    """One HTTP client connection: its sans-IO ProxyConnection, the bytes it moved, and
    the number of requests it forwarded."""

    def __init__(self, conn: ProxyConnection, reader: Reader, transport: asyncio.Transport) -> None:
        self._conn = conn
        self._reader = reader
        self._transport = transport
        self.request: ProxyRequest | None = None  # the current (first, then latest) request
        self.requests = 0  # forwarded requests (absolute form); 0 for a CONNECT tunnel
        self.bytes_from_client = 0  # forwarding: bytes sent to origins for the client
        self.bytes_to_client = 0  # forwarding: bytes of responses sent to the client
        self._origin: _Origin | None = None
        self._responded = False  # the current request's response head went out
        # The user's bandwidth limit (from client, to client), as the relay applies it.
        self._buckets: tuple[TokenBucket, TokenBucket] | None = None

    async def read_request(self, deadline: float) -> ProxyRequest | None:
        """The first request head, before ``deadline``; None if the client left first.

        Raises:
            RemoteProtocolError: a malformed head or one over 16 KiB (reply_hint 400/431).
            TimeoutError: no complete head in time; a 408 has been sent.
        """
        try:
            async with asyncio.timeout_at(deadline):
                request = await self._next_head()
        except TimeoutError:
            # RFC 9110 §15.5.9: 408 "indicates that the server did not receive a complete
            # request message within the time that it was prepared to wait".
            self._write(error_response(408))
            raise
        self.request = request
        return request

    def reply(self, reply: Reply) -> bytes:
        """What the client gets for the SOCKS reply its request would have had: the 2xx of
        a CONNECT, nothing for a forwarded request (the origin's response follows), an
        error status with a close otherwise."""
        assert self.request is not None
        if reply is not Reply.SUCCEEDED:
            return error_response(status_for(reply))
        if self.request.method == b"CONNECT":
            return self._conn.send(established_response())
        return b""

    def challenge(self) -> None:
        """407 with ``Proxy-Authenticate: Basic realm="socksauth"``, then the caller closes."""
        self._write(error_response(407, challenge=True))

    def refuse(self, status: int) -> None:
        self._write(error_response(status))

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """After a CONNECT head: what the client pipelined (for the tunnel), whether it closed."""
        return self._conn.trailing_data

    def close(self) -> None:
        """Drop the origin connection now (the account was revoked, or the client left)."""
        if self._origin is not None:
            self._origin.close()
            self._origin = None

    async def forward(
        self,
        dial: Callable[[Address], Awaitable[socket.socket | None]],
        may_continue: Callable[[ProxyRequest], bool],
        idle_timeout_seconds: float | None,
        buckets: tuple[TokenBucket, TokenBucket] | None = None,
    ) -> None:
        """Forward the current request and every later one on this connection, until
        either side closes or a request cannot be served.

        ``dial`` opens a connection for a target, or answers the client itself (a refusal,
        a failed connect) and returns None; ``may_continue`` says whether a later request
        may use this connection's login (its credentials are the same or absent);
        ``buckets``: the user's bandwidth limit, charged per body chunk as the relay does.
        """
        self._buckets = buckets
        request = self.request
        assert request is not None
        try:
            while True:
                origin = self._origin
                if origin is None or origin.target != request.target or not origin.reusable:
                    self.close()
                    sock = await dial(request.target)
                    if sock is None:
                        return
                    origin = self._origin = await _Origin.open(sock, request.target)
                self.requests += 1
                if not await self._exchange(request, origin, idle_timeout_seconds):
                    return
                if not self._conn.keep_alive:
                    return
                self._conn.start_next_cycle()
                origin.next_cycle()
                try:
                    async with asyncio.timeout(idle_timeout_seconds):
                        following = await self._next_head()
                except TimeoutError:
                    return  # a keep-alive connection idle too long: closed without a word
                if following is None:
                    return
                if not may_continue(following):
                    self.challenge()
                    return
                request = self.request = following
        finally:
            self.close()

    async def _exchange(
        self, request: ProxyRequest, origin: _Origin, idle_timeout_seconds: float | None
    ) -> bool:
        """One request to ``origin`` and its response back; False when the connection
        cannot go on (the origin failed or closed mid-response, or the client left)."""
        headers = [
            (name, value) for name, value in forwarded_headers(request.headers) if name != b"host"
        ]
        # RFC 9112 §3.2.2: a proxy that forwards an absolute-form request "MUST ignore the
        # received Host header field (if any) and instead replace it with the host
        # information of the request-target".
        headers.insert(0, (b"host", _authority(request.target)))
        try:
            origin.send(h11.Request(method=request.method, target=request.path, headers=headers))
            self.bytes_from_client += await self._send_body(origin)
            await origin.drain()
            return await self._relay_response(request, origin, idle_timeout_seconds)
        except (OSError, h11.ProtocolError, TimeoutError) as error:
            log.info("forwarding %s %s failed: %s", request.method.decode(), request.target, error)
            if not self._responded:
                self._write(error_response(504 if isinstance(error, TimeoutError) else 502))
            return False

    async def _send_body(self, origin: _Origin) -> int:
        """The client's request body to the origin, chunk by chunk; the bytes sent."""
        sent = 0
        while True:
            event = self._conn.next_event()
            if event is NEED_DATA:
                await self._wait_for_client()
                continue
            if isinstance(event, h11.Data):
                sent += origin.send(h11.Data(data=event.data))
                await origin.drain()
                await self._pace(0, len(event.data))
            elif isinstance(event, h11.EndOfMessage):
                sent += origin.send(h11.EndOfMessage())
                return sent
            else:
                raise h11.RemoteProtocolError("the client left during its request body")

    async def _relay_response(
        self, request: ProxyRequest, origin: _Origin, idle_timeout_seconds: float | None
    ) -> bool:
        self._responded = False
        while True:
            event = await origin.next_event(idle_timeout_seconds)
            if isinstance(event, h11.InformationalResponse):
                if event.status_code == 101:
                    raise h11.RemoteProtocolError("the origin switched protocols")
                self._write(
                    self._conn.send(
                        h11.InformationalResponse(
                            status_code=event.status_code,
                            headers=forwarded_headers(list(event.headers)),
                            reason=event.reason,
                        )
                    )
                )
            elif isinstance(event, h11.Response):
                self._responded = True
                self._write(
                    self._conn.send(
                        h11.Response(
                            status_code=event.status_code,
                            headers=forwarded_headers(list(event.headers)),
                            reason=event.reason,
                        )
                    )
                )
            elif isinstance(event, h11.Data):
                self._write(self._conn.send(h11.Data(data=event.data)))
                await self._reader.drain()
                await self._pace(1, len(event.data))
            elif isinstance(event, h11.EndOfMessage):
                self._write(self._conn.send(h11.EndOfMessage()))
                return not self._reader.lost
            else:
                raise h11.RemoteProtocolError("the origin closed before its response ended")

    async def _pace(self, direction: int, nbytes: int) -> None:
        """Wait as long as the bandwidth limit asks after ``nbytes`` (0: from the client)."""
        if self._buckets is not None:
            delay = self._buckets[direction].consume(nbytes)
            if delay:
                await asyncio.sleep(delay)

    async def _next_head(self) -> ProxyRequest | None:
        while True:
            event = self._conn.next_event()
            if event is NEED_DATA:
                await self._wait_for_client()
                continue
            if isinstance(event, ProxyRequest):
                return event
            if event is PAUSED:
                return None
            return None  # the client closed (or sent a body where no request was)

    async def _wait_for_client(self) -> None:
        if self._reader.lost:
            raise ConnectionResetError("the client is gone")
        await self._reader.wait_for_data()

    def _write(self, data: bytes) -> None:
        if data and not self._transport.is_closing():
            self.bytes_to_client += len(data)
            self._transport.write(data)


def _authority(target: Address) -> bytes:
    host = f"[{target.host}]" if target.type is AddressType.IPV6 else target.host
    text = host if target.port == 80 else f"{host}:{target.port}"
    return text.encode("utf-8", "surrogateescape")


class _Origin:
    """The connection to one origin: h11's client side over asyncio streams."""

    def __init__(
        self, target: Address, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.target = target
        self._reader = reader
        self._writer = writer
        self._h11 = h11.Connection(h11.CLIENT)

    @classmethod
    async def open(cls, sock: socket.socket, target: Address) -> _Origin:
        reader, writer = await asyncio.open_connection(sock=sock)
        return cls(target, reader, writer)

    @property
    def reusable(self) -> bool:
        return self._h11.our_state is h11.IDLE and not self._writer.is_closing()

    def send(self, event: h11.Request | h11.Data | h11.EndOfMessage) -> int:
        data = self._h11.send(event)
        if data:
            self._writer.write(data)
            return len(data)
        return 0

    async def drain(self) -> None:
        await self._writer.drain()

    async def next_event(self, timeout_seconds: float | None) -> h11.Event:
        while True:
            event = self._h11.next_event()
            if event is not h11.NEED_DATA:
                assert not isinstance(event, type)
                return event
            async with asyncio.timeout(timeout_seconds):
                data = await self._reader.read(_ORIGIN_READ_BYTES)
            self._h11.receive_data(data)

    def next_cycle(self) -> None:
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
        else:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop may be closing
            self._writer.close()
