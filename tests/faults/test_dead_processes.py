"""Processes and peers that die or go silent: a worker killed with SIGKILL mid-tunnel (its
audit rows end `interrupted`, the other worker's tunnels and rows are untouched), and a target
that never accepts (the client gets REP 0x06 at the connect timeout, one line, no traceback)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator

import pytest
from conftest import Lines
from e2e import (
    EchoServer,
    ProxyFactory,
    eventually,
    open_tunnel,
    read_exactly,
    running_two_workers,
)

from socksauth.store.audit import SqlAuditStore
from socksauth.store.database import create_engine
from socksauth.store.interfaces import OPEN, AuditEntry, AuditQuery
from socksauth.store.users import SqlUserStore

TUNNELS = 16


async def audit_rows(database_url: str) -> list[AuditEntry]:
    engine = create_engine(database_url)
    try:
        return list(await SqlAuditStore(engine).find_entries(AuditQuery(limit=None)))
    finally:
        await engine.dispose()


async def ended(reader: asyncio.StreamReader) -> bool:
    """Whether the proxy's side of this tunnel is gone (EOF or reset) within 0.5 s."""
    try:
        async with asyncio.timeout(0.5):
            return await reader.read(1) == b""
    except TimeoutError:
        return False
    except ConnectionError:
        return True


@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_a_worker_killed_mid_tunnel_leaves_its_rows_interrupted_and_others_untouched(
    database_url: str, user_store: SqlUserStore, echo_server: EchoServer
) -> None:
    # No crash-loop guard: the supervisor restarts the worker however soon it is killed.
    async with running_two_workers(database_url, "--worker-min-uptime", "0") as supervisor:
        await eventually(lambda: len(supervisor.worker_pids()) == 2, what="two workers")
        tunnels = []
        for _ in range(TUNNELS):
            reader, writer, reply = await open_tunnel(
                supervisor.port, echo_server.host, echo_server.port
            )
            assert reply.reply == 0
            writer.write(b"ping")
            assert await read_exactly(reader, 4) == b"ping"
            tunnels.append((reader, writer, writer.get_extra_info("sockname")[1]))

        async def all_open() -> bool:
            rows = await audit_rows(database_url)
            return sum(row.outcome is None and row.command is not None for row in rows) >= TUNNELS

        async with asyncio.timeout(20):
            while not await all_open():
                await asyncio.sleep(0.1)
        victim = min(supervisor.worker_pids())
        os.kill(victim, signal.SIGKILL)
        dead_ports, live = set(), []
        for reader, writer, port in tunnels:
            if await ended(reader):
                dead_ports.add(port)
                writer.close()
            else:
                live.append((reader, writer, port))
        assert dead_ports and live, "the tunnels did not spread over both workers"
        # The others keep going while the supervisor restarts the victim.
        await eventually(
            lambda: len(supervisor.worker_pids()) == 2 and victim not in supervisor.worker_pids(),
            what="a replacement worker",
        )
        for reader, writer, _ in live:
            writer.write(b"still there?")
            assert await read_exactly(reader, 12) == b"still there?"
            writer.write_eof()
            async with asyncio.timeout(10):
                assert await reader.read() == b""
            writer.close()

        async def settled() -> list[AuditEntry]:
            rows = [row for row in await audit_rows(database_url) if row.command is not None]
            return rows if all(row.outcome is not None for row in rows) else []

        async with asyncio.timeout(30):
            while not (rows := await settled()):
                await asyncio.sleep(0.2)
        supervisor.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await supervisor.process.wait() == 0
    by_port = {row.client_port: row.outcome for row in rows}
    print(
        f"\nSIGKILL of one of 2 workers with {TUNNELS} tunnels: {len(dead_ports)} died with it "
        f"(audited {sorted({by_port[p] for p in dead_ports})}), {len(live)} went on "
        f"(audited {sorted({by_port[p] for _, _, p in live})}); {len(rows)} rows for "
        f"{TUNNELS} tunnels"
    )
    assert len(rows) == TUNNELS
    assert {by_port[port] for port in dead_ports} == {"interrupted"}
    assert {by_port[port] for _, _, port in live} == {"closed"}
    assert OPEN not in by_port.values()


@contextlib.asynccontextmanager
async def silent_target() -> AsyncIterator[int]:
    """A port whose accept queue is full and never drained: a SYN there gets no answer."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        # Linux lets backlog + 1 connections complete; then SYNs are dropped.
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                filler.connect(("127.0.0.1", port))
            fillers.append(filler)
        await asyncio.sleep(0.2)
        yield port
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_target_that_never_answers_gets_rep_0x06_at_the_connect_timeout(
    start_proxy: ProxyFactory, lines: Lines
) -> None:
    async with start_proxy(connect_timeout_seconds=0.5) as proxy, silent_target() as port:
        loop = asyncio.get_running_loop()
        started = loop.time()
        replies = await asyncio.gather(
            *(open_tunnel(proxy.port, "127.0.0.1", port) for _ in range(10))
        )
        took = loop.time() - started
        for _, writer, _ in replies:
            writer.close()
        await asyncio.sleep(0.1)
    codes = {reply.reply for _, _, reply in replies}
    finished = [m for m in lines.messages() if "connect_failed" in m]
    print(
        f"\n10 CONNECTs to a target that never answers: replies {codes} in {took:.2f} s, "
        f"{len(finished)} lines, {len(lines.tracebacks())} tracebacks"
    )
    assert codes == {0x06}  # RFC 1928 §6: TTL expired, what a timed-out connect maps to
    assert took < 5.0
    assert len(finished) == 10  # one line per connection, as for any other
    assert lines.tracebacks() == []
    assert not any(r.levelno >= logging.WARNING for r in lines.records)
