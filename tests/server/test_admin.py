"""The admin listener over real HTTP: /metrics after real SOCKS exchanges, /healthz, /readyz
(and why it says 503), and what it does with requests that are not a scraper's."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from alembic.script import ScriptDirectory
from e2e import (
    ALICE,
    UDP_ASSOCIATE,
    EchoServer,
    allow_loopback_targets,
    credentials,
    eventually,
    greeting,
    http_connect,
    login,
    open_tunnel,
    raw_connection,
    read_exactly,
    read_http_head,
    read_reply,
    read_until_closed,
    request,
    with_timeout,
)
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from socksauth import app
from socksauth.config import ListenAddress, Settings
from socksauth.metrics import Metrics
from socksauth.protocol import Command
from socksauth.server.access import Access
from socksauth.server.admin import AdminListener, bind_admin_socket
from socksauth.server.listener import ProxyServer
from socksauth.server.policy import Verdict
from socksauth.store import migrate
from socksauth.store.database import create_engine
from socksauth.store.users import SqlUserStore

PAYLOAD = b"measure these bytes"


@dataclass
class Served:
    server: ProxyServer
    admin: str  # http://127.0.0.1:PORT

    @property
    def port(self) -> int:
        return self.server.bound[0].port


@contextlib.asynccontextmanager
async def serving(database_url: str, **overrides: Any) -> AsyncIterator[Served]:
    """A proxy with its admin listener on a free loopback port."""
    await allow_loopback_targets(database_url)
    admin_socket = bind_admin_socket(ListenAddress(host="127.0.0.1", port=0))
    admin_port = admin_socket.getsockname()[1]
    settings = Settings(
        database_url=database_url,
        listen=(ListenAddress(host="127.0.0.1", port=0),),
        admin_listen=ListenAddress(host="127.0.0.1", port=admin_port),
        **overrides,
    )
    async with app.running_server(settings, admin_socket=admin_socket) as server:
        yield Served(server, f"http://127.0.0.1:{admin_port}")


async def get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10.0) as client:
        return await client.get(url)


async def scrape(served: Served) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of /metrics by (name, labels)."""
    response = await get(f"{served.admin}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def echo_once(port: int, echo: EchoServer) -> None:
    """Log in as alice, CONNECT to the echo server, PAYLOAD there and back, close."""
    reader, writer, reply = await open_tunnel(port, echo.host, echo.port)
    try:
        assert reply.reply == 0x00
        writer.write(PAYLOAD)
        assert await read_exactly(reader, len(PAYLOAD)) == PAYLOAD
        writer.write_eof()
        assert await read_until_closed(reader) == b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def fail_login(port: int, username: str) -> None:
    async with raw_connection(port) as (reader, writer):
        writer.write(greeting(0x02) + credentials(username, "not the password"))
        assert await read_exactly(reader, 4) == b"\x05\x02\x01\x01"
        assert await read_until_closed(reader) == b""


async def test_metrics_count_a_tunnel_its_bytes_its_handshake_and_a_failed_login(
    database_url: str, user_store: SqlUserStore, echo_server: EchoServer
) -> None:
    async with serving(database_url) as served:
        before = await scrape(served)
        assert value(before, "socksauth_connections_total", outcome="closed") == 0
        assert value(before, "socksauth_tunnels_active", command="connect") == 0

        # While a tunnel is open, it is counted open.
        _, writer, reply = await open_tunnel(served.port, echo_server.host, echo_server.port)
        assert reply.reply == 0x00
        samples = await scrape(served)
        assert value(samples, "socksauth_tunnels_active", command="connect") == 1
        assert value(samples, "socksauth_handshake_duration_seconds_count") == 1
        writer.close()
        await eventually(lambda: served.server.active_clients == 0, what="the tunnel closed")

        await echo_once(served.port, echo_server)
        await fail_login(served.port, ALICE)
        await eventually(lambda: served.server.active_clients == 0, what="all clients gone")

        after = await scrape(served)
        assert value(after, "socksauth_tunnels_active", command="connect") == 0
        assert value(after, "socksauth_connections_total", outcome="closed") == 2
        assert value(after, "socksauth_connections_total", outcome="auth_failed") == 1
        assert value(after, "socksauth_failed_logins_total") == 1
        assert value(after, "socksauth_bytes_from_client_total") == len(PAYLOAD)
        assert value(after, "socksauth_bytes_to_client_total") == len(PAYLOAD)
        # Two requests were answered; the failed login never got that far.
        assert value(after, "socksauth_handshake_duration_seconds_count") == 2
        assert 0 < value(after, "socksauth_handshake_duration_seconds_sum") < 10
        assert value(after, "socksauth_handshake_duration_seconds_bucket", le="+Inf") == 2
        assert value(after, "socksauth_audit_spilled_total") == 0
        assert value(after, "socksauth_database_errors_total") == 0
        # The audit's queue: the three entries above, until its next flush writes them.
        assert value(after, "socksauth_audit_queue_depth") in (0, 1, 2, 3)


async def test_an_association_is_counted_open_and_a_refused_request_is_a_timed_handshake(
    database_url: str, user_store: SqlUserStore
) -> None:
    async with serving(database_url) as served:
        async with raw_connection(served.port) as (reader, writer):
            await login(reader, writer)
            writer.write(request("0.0.0.0", 0, UDP_ASSOCIATE))
            assert (await read_reply(reader)).reply == 0x00
            samples = await scrape(served)
            assert value(samples, "socksauth_tunnels_active", command="udp_associate") == 1
        # A cloud metadata address: refused by the policy, never dialled.
        async with raw_connection(served.port) as (reader, writer):
            await login(reader, writer)
            writer.write(request("169.254.169.254", 80))
            assert (await read_reply(reader)).reply == 0x02
            assert await read_until_closed(reader) == b""
        await eventually(lambda: served.server.active_clients == 0, what="all clients gone")
        samples = await scrape(served)
        assert value(samples, "socksauth_tunnels_active", command="udp_associate") == 0
        assert value(samples, "socksauth_connections_total", outcome="denied") == 1
        assert value(samples, "socksauth_handshake_duration_seconds_count") == 2


def test_the_admin_address_is_protected_from_clients_like_a_listen_address() -> None:
    access = Access(Settings(database_url="sqlite+aiosqlite:///unused.sqlite3"))
    admin = ipaddress.ip_address("203.0.113.5")  # an address no default protects
    assert access.policy.check_address(ALICE, Command.CONNECT, admin, 9180).allowed
    access.set_other_endpoints([("203.0.113.5", 9180)])
    # Also after the proxy's listeners set their own endpoints (at start, at each reload).
    access.set_own_endpoints([("127.0.0.1", 1080)])
    verdict = access.policy.check_address(ALICE, Command.CONNECT, admin, 9180)
    assert verdict == Verdict(False, "protected: the proxy's own listen address")
    assert access.policy.check_address(ALICE, Command.CONNECT, admin, 9181).allowed


async def test_per_user_labels_name_accounts_that_logged_in_and_never_a_failed_name(
    database_url: str, user_store: SqlUserStore, echo_server: EchoServer
) -> None:
    async with serving(database_url, metrics_per_user=True) as served:
        await echo_once(served.port, echo_server)
        await echo_once(served.port, echo_server)
        await fail_login(served.port, "mallory-made-this-up")
        await eventually(lambda: served.server.active_clients == 0, what="all clients gone")

        samples = await scrape(served)
        closed = value(samples, "socksauth_connections_total", outcome="closed", user=ALICE)
        assert closed == 2
        assert value(samples, "socksauth_bytes_from_client_total", user=ALICE) == 2 * len(PAYLOAD)
        assert value(samples, "socksauth_bytes_to_client_total", user=ALICE) == 2 * len(PAYLOAD)
        assert value(samples, "socksauth_connections_total", outcome="auth_failed", user="") == 1
        assert not any("mallory" in dict(labels).get("user", "") for _, labels in samples)


async def test_without_per_user_labels_there_is_no_user_label(
    database_url: str, user_store: SqlUserStore, echo_server: EchoServer
) -> None:
    async with serving(database_url) as served:
        await echo_once(served.port, echo_server)
        await eventually(lambda: served.server.active_clients == 0, what="the client gone")
        samples = await scrape(served)
        assert value(samples, "socksauth_connections_total", outcome="closed") == 1
        assert not any("user" in dict(labels) for _, labels in samples)


async def test_healthz_readyz_and_what_else_is_refused(
    database_url: str, user_store: SqlUserStore
) -> None:
    async with serving(database_url) as served:
        healthz = await get(f"{served.admin}/healthz")
        assert (healthz.status_code, healthz.text) == (200, "ok\n")
        readyz = await get(f"{served.admin}/readyz")
        assert (readyz.status_code, readyz.text) == (200, "ready\n")
        assert (await get(f"{served.admin}/readyz?verbose=1")).status_code == 200
        # The dashboard needs credentials (tests/server/test_dashboard.py).
        assert (await get(f"{served.admin}/")).status_code == 401
        assert (await get(f"{served.admin}/metrics/extra")).status_code == 404
        async with httpx.AsyncClient(timeout=10.0) as client:
            posted = await client.post(f"{served.admin}/metrics", content=b"x")
        assert posted.status_code == 405
        assert posted.headers["allow"] == "GET"


async def test_readyz_is_503_while_the_schema_is_behind(
    database_url: str, user_store: SqlUserStore
) -> None:
    head = migrate.head()
    previous = ScriptDirectory.from_config(migrate.alembic_config()).get_revision(head)
    assert previous is not None and isinstance(previous.down_revision, str)
    engine = create_engine(database_url)
    try:
        async with serving(database_url) as served:
            assert (await get(f"{served.admin}/readyz")).status_code == 200
            # As the database of a node whose upgrade was rolled back would say.
            async with engine.begin() as conn:
                await conn.execute(
                    text("UPDATE alembic_version SET version_num = :v"),
                    {"v": previous.down_revision},
                )
            readyz = await get(f"{served.admin}/readyz")
            assert readyz.status_code == 503
            assert readyz.text == (
                f"not ready: database schema is at {previous.down_revision}, "
                f"this socksauth needs {head}\n"
            )
            async with engine.begin() as conn:
                await conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": head})
            assert (await get(f"{served.admin}/readyz")).status_code == 200
    finally:
        await engine.dispose()


async def test_readyz_is_503_while_the_proxy_stops_listening(
    database_url: str, user_store: SqlUserStore
) -> None:
    async with serving(database_url) as served:
        assert (await get(f"{served.admin}/readyz")).status_code == 200
        await served.server.stop()
        readyz = await get(f"{served.admin}/readyz")
        assert (readyz.status_code, readyz.text) == (503, "not ready: the proxy is not listening\n")
        assert (await get(f"{served.admin}/healthz")).status_code == 200


# PostgreSQL only: a SQLite file cannot be taken from a connection that has it open.
@pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
async def test_readyz_is_503_and_database_errors_count_once_the_database_is_gone(
    database_url: str, user_store: SqlUserStore
) -> None:
    url = make_url(database_url)
    async with serving(database_url) as served:
        assert (await get(f"{served.admin}/readyz")).status_code == 200
        admin = create_async_engine(
            url.set(database="postgres"), isolation_level="AUTOCOMMIT", poolclass=NullPool
        )
        try:
            async with admin.connect() as conn:
                await conn.execute(text(f'DROP DATABASE "{url.database}" WITH (FORCE)'))
        finally:
            await admin.dispose()
        readyz = await get(f"{served.admin}/readyz")
        assert readyz.status_code == 503
        assert readyz.text.startswith("not ready: database: ")
        assert f'"{url.database}" does not exist' in readyz.text
        samples = await scrape(served)
        assert value(samples, "socksauth_database_errors_total") >= 1


# --- the HTTP server alone: requests that are not a scraper's ------------------------------


@contextlib.asynccontextmanager
async def admin_alone(**limits: Any) -> AsyncIterator[int]:
    """An AdminListener with real metrics and an always-ready check; its port."""

    async def ready() -> str | None:
        return None

    sock = bind_admin_socket(ListenAddress(host="127.0.0.1", port=0))
    port = sock.getsockname()[1]
    async with AdminListener(sock, exposition=Metrics().exposition, readiness=ready, **limits):
        yield port


async def test_an_oversized_request_is_answered_431_and_closed() -> None:
    async with admin_alone(max_request_bytes=1024) as port:
        async with raw_connection(port) as (reader, writer):
            writer.write(b"GET /metrics HTTP/1.1\r\nX-Filler: " + b"a" * 4096 + b"\r\n\r\n")
            response = await read_until_closed(reader)
        assert response.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")


async def test_a_request_that_never_ends_is_cut_off_after_the_timeout() -> None:
    loop = asyncio.get_running_loop()
    async with (
        admin_alone(io_timeout_seconds=0.2) as port,
        raw_connection(port) as (reader, writer),
    ):
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: trickle\r\n")
        started = loop.time()
        # Closed without an answer: a reset or a FIN, never a response.
        with contextlib.suppress(ConnectionResetError):
            assert await with_timeout(reader.read(), 5.0) == b""
        assert 0.15 < loop.time() - started < 5.0


async def test_connections_beyond_the_cap_are_closed_at_once() -> None:
    async with admin_alone(max_connections=2) as port:
        async with contextlib.AsyncExitStack() as stack:
            for _ in range(2):  # hold both slots with requests that are not finished
                _, writer = await stack.enter_async_context(raw_connection(port))
                writer.write(b"GET /healthz HTTP/1.1\r\n")
            reader, writer = await stack.enter_async_context(raw_connection(port))
            writer.write(b"GET /healthz HTTP/1.1\r\n\r\n")
            with contextlib.suppress(ConnectionResetError):
                assert await read_until_closed(reader) == b""
        # Once they are gone, the next one is served.
        response = await get(f"http://127.0.0.1:{port}/healthz")
        assert response.status_code == 200


async def test_a_bad_request_line_is_400() -> None:
    async with admin_alone() as port:
        async with raw_connection(port) as (reader, writer):
            writer.write(b"HELLO\r\n\r\n")
            response = await read_until_closed(reader)
        assert response.startswith(b"HTTP/1.1 400 Bad Request\r\n")


async def test_metrics_tell_http_proxy_clients_from_socks5_ones(
    database_url: str, user_store: SqlUserStore, echo_server: EchoServer
) -> None:
    async with serving(database_url) as served:
        await echo_once(served.port, echo_server)
        async with raw_connection(served.port) as (reader, writer):
            writer.write(http_connect(echo_server.host, echo_server.port, password="wrong"))
            assert (await read_http_head(reader)).startswith(b"HTTP/1.1 407 ")
        for _ in range(2):
            async with raw_connection(served.port) as (reader, writer):
                writer.write(http_connect(echo_server.host, echo_server.port))
                assert (await read_http_head(reader)).startswith(b"HTTP/1.1 200 ")
                writer.write_eof()
                assert await read_until_closed(reader) == b""
        await eventually(lambda: served.server.active_clients == 0, what="all clients gone")
        samples = await scrape(served)
    assert value(samples, "socksauth_connections_by_protocol_total", protocol="socks5") == 1
    assert value(samples, "socksauth_connections_by_protocol_total", protocol="http") == 3
    assert value(samples, "socksauth_failed_logins_total") == 1
    assert value(samples, "socksauth_http_requests_total") == 0  # tunnels, not forwarded requests
