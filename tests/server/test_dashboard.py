"""The dashboard over real HTTP (httpx), on SQLite and PostgreSQL: no page without an admin
token or an admin account's Basic login, /metrics /healthz /readyz stay open, pages show the
live sessions (filterable), nodes, failed logins and rules, and escape what clients typed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from e2e import (
    ALICE,
    ALICE_PASSWORD,
    BOB,
    BOB_PASSWORD,
    USERNAME_PASSWORD,
    EchoServer,
    allow_loopback_targets,
    credentials,
    greeting,
    open_tunnel,
    raw_connection,
    read_exactly,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth import app
from socksauth.config import ListenAddress, Settings
from socksauth.server.admin import bind_admin_socket
from socksauth.server.listener import ProxyServer
from socksauth.store.admin import SqlAdminCredentials
from socksauth.store.interfaces import SessionQuery
from socksauth.store.sessions import SqlSessionStore
from socksauth.store.users import SqlUserStore

HOSTILE_NAME = '<script>alert("x")</script>'


@dataclass
class Served:
    server: ProxyServer
    admin: str  # http://127.0.0.1:PORT

    @property
    def port(self) -> int:
        return self.server.bound[0].port


@contextlib.asynccontextmanager
async def serving(database_url: str, **overrides: Any) -> AsyncIterator[Served]:
    """A proxy with its admin listener (and so the dashboard) on a free loopback port."""
    await allow_loopback_targets(database_url)
    admin_socket = bind_admin_socket(ListenAddress(host="127.0.0.1", port=0))
    admin_port = admin_socket.getsockname()[1]
    settings = Settings(
        database_url=database_url,
        listen=(ListenAddress(host="127.0.0.1", port=0),),
        admin_listen=ListenAddress(host="127.0.0.1", port=admin_port),
        node_name="node-a",
        **overrides,
    )
    async with app.running_server(settings, admin_socket=admin_socket) as server:
        yield Served(server, f"http://127.0.0.1:{admin_port}")


async def get(url: str, **options: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10.0) as client:
        return await client.get(url, **options)


async def a_token(engine: AsyncEngine) -> str:
    token, digest = app.new_admin_token()
    await SqlAdminCredentials(engine).add_token("ci", digest)
    return token


async def test_pages_need_a_token_or_an_admin_account_and_the_probes_stay_open(
    database_url: str, engine: AsyncEngine, user_store: SqlUserStore
) -> None:
    token = await a_token(engine)
    await SqlAdminCredentials(engine).set_admin(BOB, True)
    async with serving(database_url) as served:
        for path in ("/", "/sessions", "/rules"):
            refused = await get(served.admin + path)
            assert refused.status_code == 401
            assert refused.headers["www-authenticate"].startswith("Basic ")
            assert ALICE not in refused.text
        wrong = {"Authorization": "Bearer sa_not-the-token"}
        assert (await get(served.admin + "/", headers=wrong)).status_code == 401
        # alice is a proxy user but not an admin; bob is both.
        assert (await get(served.admin + "/", auth=(ALICE, ALICE_PASSWORD))).status_code == 401
        assert (await get(served.admin + "/", auth=(BOB, "wrong-password"))).status_code == 401
        ok = await get(served.admin + "/", auth=(BOB, BOB_PASSWORD))
        assert ok.status_code == 200 and "<h1>Overview</h1>" in ok.text
        assert "script-src 'self'" in ok.headers["content-security-policy"]
        bearer = await get(served.admin + "/rules", headers={"Authorization": f"Bearer {token}"})
        assert bearer.status_code == 200 and "Rules in force" in bearer.text
        for probe in ("/metrics", "/healthz", "/readyz"):
            assert (await get(served.admin + probe)).status_code == 200
        chart = await get(served.admin + "/static/chart.umd.min.js")
        assert chart.status_code == 200 and "Chart.js v4" in chart.text[:200]
        async with httpx.AsyncClient(timeout=10.0) as client:
            posted = await client.post(
                served.admin + "/sessions", headers={"Authorization": f"Bearer {token}"}
            )
        assert posted.status_code == 405
        # A withdrawn right applies at once (the change reaches the node's account cache).
        await SqlAdminCredentials(engine).set_admin(BOB, False)
        deadline = time.monotonic() + 5
        while (await get(served.admin + "/", auth=(BOB, BOB_PASSWORD))).status_code != 401:
            assert time.monotonic() < deadline, "bob is still an admin"
            await asyncio.sleep(0.1)


async def test_pages_show_live_sessions_filtered_nodes_failed_logins_and_rules_escaped(
    database_url: str, engine: AsyncEngine, user_store: SqlUserStore, echo_server: EchoServer
) -> None:
    token = await a_token(engine)
    auth = {"Authorization": f"Bearer {token}"}
    async with serving(database_url, audit_interim_seconds=0.5) as served:
        reader, writer, reply = await open_tunnel(served.port, echo_server.host, echo_server.port)
        try:
            assert reply.reply == 0
            writer.write(b"y" * 5000)
            await read_exactly(reader, 5000)
            # A failed login whose name is markup.
            async with raw_connection(served.port) as (fail_reader, fail_writer):
                fail_writer.write(greeting(USERNAME_PASSWORD) + credentials(HOSTILE_NAME, "x"))
                assert (await read_exactly(fail_reader, 4))[3] != 0
            sessions = SqlSessionStore(engine)
            deadline = time.monotonic() + 5
            while not await sessions.live_sessions(SessionQuery()):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
            [session] = await sessions.live_sessions(SessionQuery())
            page = await get(served.admin + "/sessions", headers=auth)
            assert page.status_code == 200
            assert str(session.id) in page.text and "1 live session(s)" in page.text
            filtered = await get(served.admin + f"/sessions?user={BOB}", headers=auth)
            assert str(session.id) not in filtered.text and "(filtered)" in filtered.text
            by_node = await get(served.admin + "/sessions?user=&node=node-a", headers=auth)
            assert str(session.id) in by_node.text
            deadline = time.monotonic() + 5
            while True:
                overview = (await get(served.admin + "/", headers=auth)).text
                if "alert" in overview or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.1)
            assert "node-a" in overview and "live" in overview
            assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in overview
            assert HOSTILE_NAME not in overview
            assert 'id="traffic-data"' in overview and '"user":"alice"' in overview
            rules = await get(served.admin + "/rules", headers=auth)
            assert "127.0.0.0/8" in rules.text and "allow" in rules.text
        finally:
            writer.close()
