"""A minimal SOCKS5 client (RFC 1928 CONNECT IPv4 + RFC 1929 login) on raw asyncio sockets.

Hand-written so the load generator spends as little CPU as possible per exchange: every step
waits for its reply (no pipelining), as curl and most clients do.
"""

from __future__ import annotations

import asyncio
import socket
from dataclasses import dataclass


class Socks5Error(ConnectionError):
    """The proxy answered something other than success."""


@dataclass(frozen=True, slots=True)
class Route:
    """How to reach a target: directly (proxy None) or through a SOCKS5 proxy with a login."""

    proxy: tuple[str, int] | None = None
    user: str = ""
    password: str = ""
    source: str | None = None  # the client's own address (127.0.0.x), else the kernel's choice


async def recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = await loop.sock_recv(sock, n - len(data))
        if not chunk:
            raise ConnectionError(f"closed by the peer after {len(data)} of {n} bytes")
        data += chunk
    return data


async def handshake(
    loop: asyncio.AbstractEventLoop,
    sock: socket.socket,
    user: str,
    password: str,
    target: tuple[str, int],
) -> None:
    """Greeting (method 0x02) → RFC 1929 login → CONNECT IPv4 → success reply."""
    await loop.sock_sendall(sock, b"\x05\x01\x02")
    if await recv_exactly(loop, sock, 2) != b"\x05\x02":
        raise Socks5Error("the proxy did not select username/password (0x02)")
    u, p = user.encode(), password.encode()
    await loop.sock_sendall(sock, b"\x01" + bytes([len(u)]) + u + bytes([len(p)]) + p)
    if await recv_exactly(loop, sock, 2) != b"\x01\x00":
        raise Socks5Error("login refused")
    host, port = target
    await loop.sock_sendall(
        sock, b"\x05\x01\x00\x01" + socket.inet_aton(host) + port.to_bytes(2, "big")
    )
    head = await recv_exactly(loop, sock, 4)
    if head[0] != 5 or head[1] != 0:
        raise Socks5Error(f"CONNECT reply {head[1]:#04x}")
    if head[3] == 1:
        rest = 4 + 2
    elif head[3] == 4:
        rest = 16 + 2
    elif head[3] == 3:
        rest = (await recv_exactly(loop, sock, 1))[0] + 2
    else:
        raise Socks5Error(f"unknown address type {head[3]:#04x} in the reply")
    await recv_exactly(loop, sock, rest)


async def open_connection(
    loop: asyncio.AbstractEventLoop, route: Route, target: tuple[str, int]
) -> socket.socket:
    """A connected non-blocking socket to ``target``, directly or through the proxy."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if route.source is not None:
            sock.bind((route.source, 0))
        if route.proxy is None:
            await loop.sock_connect(sock, target)
        else:
            await loop.sock_connect(sock, route.proxy)
            await handshake(loop, sock, route.user, route.password, target)
    except BaseException:
        sock.close()
        raise
    return sock
