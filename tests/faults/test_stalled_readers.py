"""Clients that never read while their targets push as fast as they can: each tunnel holds
about one chunk of the proxy's memory, a relay budget caps the total, and once the clients
read, every byte arrives in order."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
import time
from collections.abc import AsyncIterator

import pytest
from e2e import (
    ALICE,
    ALICE_PASSWORD,
    ProxyFactory,
    credentials,
    greeting,
    request,
)

from socksauth.server.relay import RelayBudget

CHUNK = os.urandom(1 << 20)
STREAM_CHUNKS = 8  # 8 MiB per tunnel: far more than the kernel's buffers hold
STREAM_DIGEST = hashlib.sha256(CHUNK * STREAM_CHUNKS).digest()
TUNNELS = 40

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@contextlib.asynccontextmanager
async def pushing_target() -> AsyncIterator[int]:
    """A target that writes 8 MiB (with flow control) to whoever connects, then closes."""
    tasks: set[asyncio.Task[None]] = set()

    async def push(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for _ in range(STREAM_CHUNKS):
                writer.write(CHUNK)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.get_running_loop().create_task(push(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]
        for task in list(tasks):
            task.cancel()


async def stalled_client(proxy_port: int, target_port: int) -> socket.socket:
    """A tunnel to the pushing target whose client reads nothing after the reply."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", proxy_port))
    await loop.sock_sendall(
        sock, greeting(2) + credentials(ALICE, ALICE_PASSWORD) + request("127.0.0.1", target_port)
    )
    answer = b""
    async with asyncio.timeout(10):
        while len(answer) < 14:  # method, auth status, IPv4 reply
            answer += await loop.sock_recv(sock, 14 - len(answer))
    assert answer[:5] == b"\x05\x02\x01\x00\x05" and answer[5] == 0, answer
    return sock


async def read_all(sock: socket.socket) -> bytes:
    loop = asyncio.get_running_loop()
    digest = hashlib.sha256()
    async with asyncio.timeout(30):
        while block := await loop.sock_recv(sock, 1 << 20):
            digest.update(block)
    return digest.digest()


async def settled(budget: RelayBudget, quiet_seconds: float = 0.5) -> int:
    """The budget's figure once it has not changed for ``quiet_seconds`` (at most 10 s)."""
    last, since = budget.used, time.monotonic()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        if budget.used != last:
            last, since = budget.used, time.monotonic()
        elif time.monotonic() - since >= quiet_seconds:
            break
    return last


async def run_stalled(start_proxy: ProxyFactory, **settings: object) -> tuple[int, int]:
    """TUNNELS stalled tunnels; (relay bytes held once settled, directions the budget paused);
    then every client reads its whole stream, which must arrive intact."""
    async with start_proxy(**settings) as proxy, pushing_target() as target:
        access = proxy.server.access
        assert access is not None
        socks = [await stalled_client(proxy.port, target) for _ in range(TUNNELS)]
        try:
            held = await settled(access.relay_budget)
            paused = access.relay_budget.waiting
            digests = await asyncio.gather(*(read_all(sock) for sock in socks))
        finally:
            for sock in socks:
                sock.close()
        assert digests == [STREAM_DIGEST] * TUNNELS, "a stalled stream lost or reordered bytes"
        await asyncio.sleep(0.2)
        assert access.relay_budget.used == 0, "ended tunnels still counted"
    return held, paused


async def test_a_stalled_tunnel_holds_about_one_chunk_and_its_stream_arrives_intact(
    start_proxy: ProxyFactory,
) -> None:
    held, paused = await run_stalled(start_proxy)
    per_tunnel = held / TUNNELS
    print(
        f"\n{TUNNELS} stalled tunnels: {held / 1024:.0f} KiB held, {per_tunnel / 1024:.0f} KiB each"
    )
    # One relay_buffer_bytes chunk (256 KiB) in the client's transport, plus the small buffers.
    assert per_tunnel <= 300 * 1024
    assert paused == 0  # the default budget (a quarter of the memory) is far away


async def test_the_relay_budget_caps_what_all_tunnels_hold_together(
    start_proxy: ProxyFactory,
) -> None:
    budget = 1 << 20
    held, paused = await run_stalled(start_proxy, relay_memory_budget_bytes=budget)
    print(f"\n{TUNNELS} stalled tunnels, budget 1 MiB: {held / 1024:.0f} KiB held, {paused} paused")
    # Over the budget, no buffer grows past 16 KiB and a backed-up tunnel stops reading: the
    # budget plus a small buffer's worth per tunnel at most (without it: 40 times 256 KiB).
    assert held <= budget + TUNNELS * 48 * 1024
    assert paused > 0
