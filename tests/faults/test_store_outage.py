"""A store outage costs a few log lines, not one per attempt: PostgreSQL stopped and started
(our own cluster), every socksauth connection terminated, SQLite locked by another writer for
longer than its busy timeout. Warm users, open tunnels and the audit keep working."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from conftest import Cluster, Lines
from e2e import (
    ALICE,
    ALICE_PASSWORD,
    BOB,
    BOB_PASSWORD,
    EchoServer,
    add_test_users,
    allow_loopback_targets,
    credentials,
    greeting,
    read_exactly,
    read_reply,
    request,
)
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from socksauth import app
from socksauth.auth import accounts
from socksauth.config import ListenAddress, Settings
from socksauth.server.admin import bind_admin_socket
from socksauth.server.listener import ProxyServer
from socksauth.store import migrate
from socksauth.store.audit import SqlAuditStore
from socksauth.store.database import create_engine
from socksauth.store.interfaces import AuditQuery


@contextlib.asynccontextmanager
async def fresh_database(cluster: Cluster) -> AsyncIterator[str]:
    """A new database on ``cluster``, migrated, with alice (max 50 connections: the
    connection leases take part) and bob, and rules that allow loopback targets."""
    name = f"socksauth_f_{secrets.token_hex(6)}"
    admin = create_async_engine(cluster.admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    async with admin.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = cluster.url(name)
    try:
        await prepare(url)
        yield url
    finally:
        async with admin.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await admin.dispose()


async def prepare(url: str) -> None:
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine)
        store = await add_test_users(engine)
        await accounts.set_limits(store, ALICE, max_connections=50)
    finally:
        await engine.dispose()
    await allow_loopback_targets(url)


def settings_for(url: str, **overrides: object) -> Settings:
    # Short intervals: every store loop runs many times during the outage.
    values: dict[str, object] = {
        "database_url": url,
        "listen": (ListenAddress(host="127.0.0.1", port=0),),
        "account_check_seconds": 0.5,
        "change_poll_seconds": 0.2,
        "shutdown_grace_seconds": 1.0,
    }
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


async def tunnel(port: int, echo: EchoServer, user: str = ALICE, password: str = ALICE_PASSWORD):  # type: ignore[no-untyped-def]
    """A CONNECT tunnel through the proxy to ``echo``: (reader, writer) after the reply."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(greeting(2) + credentials(user, password) + request("127.0.0.1", echo.port))
    assert await read_exactly(reader, 2) == b"\x05\x02"
    assert await read_exactly(reader, 2) == b"\x01\x00", "login refused"
    assert (await read_reply(reader)).reply == 0
    return reader, writer


async def echo_once(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    payload = secrets.token_bytes(1024)
    writer.write(payload)
    assert await read_exactly(reader, len(payload)) == payload


def recovered(lines: Lines) -> bool:
    """Every loop that logged the start of an outage has logged its end, and one did."""
    messages = lines.messages(logging.WARNING)
    failed = sum("retrying with back-off" in m for m in messages)
    return 0 < failed == sum("works again after" in m for m in messages)


async def until_recovered(server: ProxyServer, echo: EchoServer, lines: Lines) -> None:
    """Logins (which take a connection lease) until every loop logged its recovery; their
    back-off is at most 10 s (audit: 30 s)."""
    async with asyncio.timeout(45):
        while not recovered(lines):
            reader, writer = await tunnel(server.bound[0].port, echo)
            await echo_once(reader, writer)
            writer.close()
            await asyncio.sleep(0.25)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_outage(
    server: ProxyServer,
    echo: EchoServer,
    lines: Lines,
    down_seconds: float,
    stop: object,
    start: object,
) -> dict[str, float]:
    """Warm logins and an open tunnel before, during and after ``stop()`` … ``start()``;
    returns what it measured."""
    port = server.bound[0].port
    open_reader, open_writer = await tunnel(port, echo)  # also warms alice's account
    await echo_once(open_reader, open_writer)
    lines.records.clear()
    cpu_before = cpu_seconds()
    started = time.monotonic()
    await asyncio.to_thread(stop)  # type: ignore[arg-type]
    served = 0
    deadline = time.monotonic() + down_seconds
    while time.monotonic() < deadline:
        reader, writer = await tunnel(port, echo)  # a warm user: served from memory
        await echo_once(reader, writer)
        writer.close()
        await echo_once(open_reader, open_writer)  # the tunnel opened before keeps going
        served += 1
        await asyncio.sleep(0.1)
    await asyncio.to_thread(start)  # type: ignore[arg-type]
    down = time.monotonic() - started
    cpu = cpu_seconds() - cpu_before
    open_writer.close()
    return {"served": served, "down_seconds": down, "cpu_seconds": cpu}


@pytest.mark.slow
async def test_postgresql_stopped_and_started_costs_a_few_lines_and_no_traceback(
    cluster: Cluster, echo_server: EchoServer, lines: Lines
) -> None:
    async with (
        fresh_database(cluster) as url,
        app.running_server(settings_for(url)) as server,
    ):
        # SOCKSAUTH_FAULT_OUTAGE_SECONDS: a longer outage, to see that the lines do not grow.
        down = float(os.environ.get("SOCKSAUTH_FAULT_OUTAGE_SECONDS", "5"))
        figures = await run_outage(server, echo_server, lines, down, cluster.stop, cluster.start)
        # Every loop notices that the database is back (their back-off is at most 30 s; the
        # first retries come within a few seconds).
        await until_recovered(server, echo_server, lines)
        await asyncio.sleep(1.0)
    messages = lines.messages(logging.WARNING)
    print(
        f"\nPostgreSQL down {figures['down_seconds']:.1f} s: {figures['served']} warm logins "
        f"served, {len(messages)} warning lines, {len(lines.tracebacks())} tracebacks, "
        f"{figures['cpu_seconds']:.2f} s CPU"
    )
    for message in messages:
        print("   ", message)
    assert figures["served"] >= 10
    assert lines.tracebacks() == []
    # Two lines per loop at most (failing, working again), plus the audit's two summaries.
    assert len(messages) <= 16, messages
    assert not any("unexpected error" in m for m in messages)


async def test_every_socksauth_connection_terminated_costs_a_few_lines(
    cluster: Cluster, echo_server: EchoServer, lines: Lines
) -> None:
    async with (
        fresh_database(cluster) as url,
        app.running_server(settings_for(url)) as server,
    ):
        port = server.bound[0].port
        reader, writer = await tunnel(port, echo_server)
        lines.records.clear()
        admin = create_async_engine(
            cluster.admin_url, isolation_level="AUTOCOMMIT", poolclass=NullPool
        )
        try:
            async with admin.connect() as conn:
                terminated = await conn.scalar(
                    text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = :name AND pid <> pg_backend_pid()"
                    ),
                    {"name": url.rsplit("/", 1)[1]},
                )
        finally:
            await admin.dispose()
        assert terminated
        for _ in range(10):
            again, again_writer = await tunnel(port, echo_server)
            await echo_once(again, again_writer)
            again_writer.close()
            await echo_once(reader, writer)
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.5)  # a few rounds of every loop
        writer.close()
    messages = lines.messages(logging.WARNING)
    print(f"\n{terminated} connections terminated: {len(messages)} warning lines")
    for message in messages:
        print("   ", message)
    assert lines.tracebacks() == []
    assert len(messages) <= 8, messages


@pytest.mark.slow
async def test_sqlite_locked_longer_than_the_busy_timeout_costs_a_few_lines(
    tmp_path: Path, echo_server: EchoServer, lines: Lines
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'socksauth.sqlite3'}"
    await prepare(url)
    lock = sqlite3.connect(
        tmp_path / "socksauth.sqlite3", isolation_level=None, timeout=5, check_same_thread=False
    )

    def take_lock() -> None:
        lock.execute("BEGIN EXCLUSIVE")

    def release_lock() -> None:
        lock.execute("ROLLBACK")

    try:
        async with app.running_server(settings_for(url)) as server:
            # 7 s: longer than the busy timeout (5 s), so writers fail, not just wait.
            figures = await run_outage(server, echo_server, lines, 7.0, take_lock, release_lock)
            await until_recovered(server, echo_server, lines)
            await asyncio.sleep(1.0)
    finally:
        lock.close()
    messages = lines.messages(logging.WARNING)
    print(
        f"\nSQLite locked {figures['down_seconds']:.1f} s: {figures['served']} warm logins "
        f"served, {len(messages)} warning lines, {len(lines.tracebacks())} tracebacks, "
        f"{figures['cpu_seconds']:.2f} s CPU"
    )
    for message in messages:
        print("   ", message)
    engine = create_engine(url)
    try:
        rows = await SqlAuditStore(engine).find_entries(AuditQuery(username=ALICE, limit=None))
    finally:
        await engine.dispose()
    assert len(rows) >= figures["served"] + 1, "audit rows lost"
    # alice has a connection limit: the first of her logins in the lock, and one per retry of
    # the leases, waits the busy timeout (5 s) before it is counted in this process only.
    assert figures["served"] >= 5
    assert lines.tracebacks() == []
    assert len(messages) <= 16, messages


async def http_get(port: int, path: str) -> tuple[int, str]:
    """(status, body) of GET ``path`` from the admin listener on 127.0.0.1:``port``."""
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.get(f"http://127.0.0.1:{port}{path}")
    return response.status_code, response.text


async def cold_login(port: int, echo: EchoServer) -> bytes:
    """bob, whose account is not in memory: what the proxy answers to his credentials, up
    to its close (fails if it does not close)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(greeting(2) + credentials(BOB, BOB_PASSWORD) + request("127.0.0.1", echo.port))
        assert await read_exactly(reader, 2) == b"\x05\x02"
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


@pytest.mark.slow
async def test_a_cold_login_during_an_outage_gets_the_rfc_1929_failure_and_is_audited(
    cluster: Cluster, echo_server: EchoServer, lines: Lines
) -> None:
    admin_socket = bind_admin_socket(ListenAddress(host="127.0.0.1", port=0))
    admin_port = admin_socket.getsockname()[1]
    async with fresh_database(cluster) as url:
        settings = settings_for(url, admin_listen=ListenAddress(host="127.0.0.1", port=admin_port))
        async with app.running_server(settings, admin_socket=admin_socket) as server:
            port = server.bound[0].port
            reader, writer = await tunnel(port, echo_server)  # alice is warm
            assert (await http_get(admin_port, "/readyz"))[0] == 200
            lines.records.clear()
            await asyncio.to_thread(cluster.stop)
            try:
                answers = [await cold_login(port, echo_server) for _ in range(20)]
                warm_reader, warm_writer = await tunnel(port, echo_server)
                await echo_once(warm_reader, warm_writer)
                warm_writer.close()
                await echo_once(reader, writer)
                ready = await http_get(admin_port, "/readyz")
                healthy = await http_get(admin_port, "/healthz")
            finally:
                await asyncio.to_thread(cluster.start)
            writer.close()
            await until_recovered(server, echo_server, lines)
            # Back: bob logs in again.
            _, bob_writer = await tunnel(port, echo_server, BOB, BOB_PASSWORD)
            bob_writer.close()
        engine = create_engine(url)
        try:
            refused = await SqlAuditStore(engine).find_entries(
                AuditQuery(username=BOB, outcome="store_unavailable", limit=None)
            )
        finally:
            await engine.dispose()
    messages = lines.messages(logging.INFO)
    summaries = [m for m in messages if "refused in the last" in m]
    print(
        f"\n20 cold logins during the outage: answers {set(answers)}, readyz {ready}, "
        f"healthz {healthy}, {len(refused)} audit rows, summary lines {summaries}"
    )
    # RFC 1929 §2: VER 1, STATUS non-zero, then the server closes.
    assert answers == [b"\x01\x01"] * 20
    assert ready[0] == 503 and "new logins cannot be checked" in ready[1]
    assert healthy == (200, "ok\n")
    assert len(refused) == 20
    assert summaries[0].startswith("1 login(s) refused in the last 60 s")
    assert len(summaries) <= 2, summaries  # the first at once, the rest at shutdown
    assert sum(int(m.split()[0]) for m in summaries) == 20
    assert lines.tracebacks() == []
    assert not any("unexpected error" in m for m in messages)
