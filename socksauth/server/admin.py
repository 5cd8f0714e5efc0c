"""AdminListener: /metrics, /healthz and /readyz over a minimal HTTP/1.1 (GET, one request per
connection), bounded in request size, time and concurrent connections; and the dashboard's
pages (server/dashboard.py), which need admin credentials, when one is given."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from types import TracebackType

from socksauth.config import ListenAddress
from socksauth.logs import get_logger
from socksauth.server.dashboard import Dashboard, is_dashboard_path
from socksauth.server.listener import listen_errors, resolve_listen

log = get_logger("admin")

# A scraper's request is one line and a few headers; more is not a scraper.
MAX_REQUEST_BYTES = 8192
# For the whole request head, and again for sending the response: a client that trickles
# bytes or never reads holds a connection no longer than this.
IO_TIMEOUT_SECONDS = 5.0
# Connections beyond this are closed at once: the admin port must not become a way to make
# the proxy's process hold unbounded sockets and tasks.
MAX_CONNECTIONS = 64

Exposition = Callable[[], tuple[bytes, str]]
# None when ready, else why not (the body of the 503).
Readiness = Callable[[], Awaitable[str | None]]

_TEXT = "text/plain; charset=utf-8"

# (status, content type, body, headers besides those every response has)
_Response = tuple[HTTPStatus, str, bytes, list[tuple[str, str]]]


def bind_admin_socket(address: ListenAddress) -> socket.socket:
    """A listening socket on ``address`` (its first address family), bound before the
    workers are forked so that all of them accept on the same one."""
    family, _, _, _, sockaddr = resolve_listen(address, "admin_listen")[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        with listen_errors(address, "admin_listen"):
            sock.bind(sockaddr)
        sock.listen(128)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class AdminListener:
    """Serves ``/metrics`` (``exposition()``, after ``before_scrape()``), ``/healthz`` (200 while
    the process runs) and ``/readyz`` (200, or 503 with ``readiness()``'s reason).

    An async context manager; it closes the socket it was given.
    """

    def __init__(
        self,
        sock: socket.socket,
        *,
        exposition: Exposition,
        readiness: Readiness,
        before_scrape: Callable[[], None] | None = None,
        dashboard: Dashboard | None = None,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        io_timeout_seconds: float = IO_TIMEOUT_SECONDS,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self._sock = sock
        self._exposition = exposition
        self._readiness = readiness
        self._before_scrape = before_scrape
        self._dashboard = dashboard
        self._max_request_bytes = max_request_bytes
        self._io_timeout = io_timeout_seconds
        self._max_connections = max_connections
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        host, port = sock.getsockname()[:2]
        self.bound = ListenAddress(host=host, port=port)

    async def __aenter__(self) -> AdminListener:
        # The StreamReader's limit bounds what readuntil() buffers looking for the blank line.
        self._server = await asyncio.start_server(
            self._handle, sock=self._sock, limit=self._max_request_bytes
        )
        pages = ", dashboard at /" if self._dashboard is not None else ""
        log.info("admin listener (/metrics, /healthz, /readyz%s) on http://%s", pages, self.bound)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.gather(*self._handlers, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._handlers) >= self._max_connections:
            writer.transport.abort()
            return
        self._handlers.add(task)
        try:
            peer = writer.get_extra_info("peername") or ("", 0)
            response = await self._respond(reader, str(peer[0]))
            if response is None:
                writer.transport.abort()
                return
            status, content_type, body, extra = response
            head = [f"HTTP/1.1 {status.value} {status.phrase}"]
            head += [f"{name}: {value}" for name, value in extra]
            head += [
                f"Content-Type: {content_type}",
                f"Content-Length: {len(body)}",
                "Connection: close",
            ]
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
            async with asyncio.timeout(self._io_timeout):
                await writer.drain()
            writer.close()
        except (TimeoutError, ConnectionError):
            writer.transport.abort()
        finally:
            self._handlers.discard(task)

    async def _respond(self, reader: asyncio.StreamReader, client_host: str) -> _Response | None:
        """(status, content type, body, extra headers) for the request ``reader`` brings;
        None when the client left or was too slow to send it."""
        try:
            async with asyncio.timeout(self._io_timeout):
                request_head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            return _text(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request too large")
        except (asyncio.IncompleteReadError, TimeoutError):
            return None
        request_line = request_head.split(b"\r\n", 1)[0].decode("latin-1")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _text(HTTPStatus.BAD_REQUEST, "bad request line")
        method, target, _ = parts
        path = target.split("?", 1)[0]
        if self._dashboard is not None and is_dashboard_path(path):
            if method != "GET":
                return _text(HTTPStatus.METHOD_NOT_ALLOWED, "GET only", [("Allow", "GET")])
            return await self._dashboard.respond(target, _headers(request_head), client_host)
        if path not in ("/metrics", "/healthz", "/readyz"):
            return _text(HTTPStatus.NOT_FOUND, "not found: try /metrics, /healthz or /readyz")
        if method != "GET":
            return _text(HTTPStatus.METHOD_NOT_ALLOWED, "GET only", [("Allow", "GET")])
        if path == "/healthz":
            return _text(HTTPStatus.OK, "ok")
        if path == "/readyz":
            reason = await self._readiness()
            if reason is None:
                return _text(HTTPStatus.OK, "ready")
            return _text(HTTPStatus.SERVICE_UNAVAILABLE, f"not ready: {reason}")
        if self._before_scrape is not None:
            self._before_scrape()
        # Multi-process mode reads every worker's files: off the loop.
        body, content_type = await asyncio.to_thread(self._exposition)
        return HTTPStatus.OK, content_type, body, []


def _headers(request_head: bytes) -> dict[str, str]:
    """The request's header fields by lower-case name (the last of repeated ones)."""
    fields = {}
    for line in request_head.split(b"\r\n")[1:]:
        name, colon, value = line.partition(b":")
        if colon:
            fields[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    return fields


def _text(status: HTTPStatus, text: str, headers: list[tuple[str, str]] | None = None) -> _Response:
    return status, _TEXT, (text + "\n").encode(), headers or []
