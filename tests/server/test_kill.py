"""Kicks: `socksauth sessions kill` ends a tunnel on whichever node holds it within 2 s (NOTIFY
across two nodes on PostgreSQL, the change counter's poll on SQLite), audited as killed with
who asked; the account stays enabled."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest
from click.testing import CliRunner, Result
from e2e import (
    BOB,
    BOB_PASSWORD,
    EchoServer,
    ProxyFactory,
    RunningProxy,
    eventually,
    login,
    open_tunnel,
    raw_connection,
    read_exactly,
    read_reply,
    request,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.cli import main
from socksauth.store.audit import SqlAuditStore
from socksauth.store.interfaces import AuditEntry, AuditQuery, SessionQuery
from socksauth.store.sessions import SqlSessionStore

KICK_SECONDS = 2.0


async def cli(*args: str) -> Result:
    runner = CliRunner(env={"SOCKSAUTH_DATABASE_URL": None})
    return await asyncio.to_thread(runner.invoke, main, list(args))


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the proxy closes or resets the client's connection (fails after
    ``seconds``)."""
    started = time.monotonic()
    async with asyncio.timeout(seconds):
        with contextlib.suppress(ConnectionError):
            while await reader.read(65536):
                pass
    return time.monotonic() - started


async def live(engine: AsyncEngine, count: int) -> list[AuditEntry]:
    """The live sessions, once there are ``count`` of them (their rows are written in 0.5 s
    batches)."""
    sessions = SqlSessionStore(engine)
    found: list[AuditEntry] = []

    async def enough() -> bool:
        found[:] = await sessions.live_sessions(SessionQuery())
        return len(found) >= count

    deadline = time.monotonic() + 5.0
    while not await enough():
        assert time.monotonic() < deadline, found
        await asyncio.sleep(0.05)
    return found


async def finished_row(engine: AsyncEngine, entry_id: object) -> AuditEntry:
    audit = SqlAuditStore(engine)
    rows: list[AuditEntry] = []

    async def done() -> bool:
        rows[:] = [
            row
            for row in await audit.find_entries(AuditQuery(limit=None))
            if row.id == entry_id and not row.is_open
        ]
        return bool(rows)

    deadline = time.monotonic() + 5.0
    while not await done():
        assert time.monotonic() < deadline, "the killed row was not completed"
        await asyncio.sleep(0.05)
    return rows[0]


@contextlib.asynccontextmanager
async def two_nodes(
    start_proxy: ProxyFactory, **overrides: object
) -> AsyncIterator[tuple[RunningProxy, RunningProxy]]:
    async with (
        start_proxy(node_name="node-a", **overrides) as a,
        start_proxy(node_name="node-b", allow_loopback=False, **overrides) as b,
    ):
        yield a, b


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
async def test_a_kick_ends_a_tunnel_on_the_other_node_within_2_seconds_by_notify(
    start_proxy: ProxyFactory, engine: AsyncEngine, echo_server: EchoServer, database_url: str
) -> None:
    # Polling so slow that only NOTIFY can bring the kick within 2 s.
    async with two_nodes(start_proxy, change_poll_seconds=60.0) as (a, b):
        reader, writer, reply = await open_tunnel(b.port, echo_server.host, echo_server.port)
        try:
            assert reply.reply == 0
            [session] = await live(engine, 1)
            assert session.node == "node-b"
            closing = asyncio.create_task(closed_within(reader, KICK_SECONDS + 1))
            result = await cli(
                "sessions", "kill", str(session.id), "--by", "ops-1", "--database-url", database_url
            )
            seen = await closing
            assert seen < KICK_SECONDS, seen
            assert result.exit_code == 0, result.output
            assert f"killed  {session.id}" in result.output
            print(f"kick seen by the client after {seen:.3f} s; {result.output.splitlines()[-1]}")
        finally:
            writer.close()
        row = await finished_row(engine, session.id)
        assert (row.outcome, row.killed_by) == ("killed", "ops-1")
        # The account stays enabled: alice tunnels again through either node.
        for node in (a, b):
            _, again_writer, again_reply = await open_tunnel(
                node.port, echo_server.host, echo_server.port
            )
            again_writer.close()
            assert again_reply.reply == 0


async def test_a_kick_by_user_and_client_network_ends_only_those_tunnels(
    start_proxy: ProxyFactory, engine: AsyncEngine, echo_server: EchoServer, database_url: str
) -> None:
    # On SQLite one node, on PostgreSQL two: each holds one of alice's tunnels.
    multi = engine.dialect.name == "postgresql"
    async with contextlib.AsyncExitStack() as stack:
        if multi:
            a, b = await stack.enter_async_context(two_nodes(start_proxy))
        else:
            a = b = await stack.enter_async_context(start_proxy(node_name="node-a"))
        tunnels = []
        for node in (a, b):
            reader, writer, reply = await open_tunnel(node.port, echo_server.host, echo_server.port)
            stack.callback(writer.close)
            assert reply.reply == 0
            tunnels.append(reader)
        bob_reader, bob_writer = await stack.enter_async_context(raw_connection(a.port))
        await login(bob_reader, bob_writer, BOB, BOB_PASSWORD)
        bob_writer.write(request(echo_server.host, echo_server.port))
        assert (await read_reply(bob_reader)).reply == 0
        await live(engine, 3)
        # Nobody from 10.0.0.0/8: nothing matches, nothing ends.
        none = await cli(
            "sessions", "kill", "--user", "alice", "--client", "10.0.0.0/8",
            "--database-url", database_url,
        )  # fmt: skip
        assert none.exit_code == 1 and "no live session matches" in none.output
        closing = [asyncio.create_task(closed_within(r, KICK_SECONDS)) for r in tunnels]
        result = await cli(
            "sessions", "kill", "--user", "alice", "--client", "127.0.0.0/8",
            "--database-url", database_url,
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert result.output.count("killed  ") == 2
        # Each client saw its tunnel close within 2 s of the kick (SQLite: the 1 s poll).
        seen = await asyncio.gather(*closing)
        assert max(seen) < KICK_SECONDS, seen
        # Bob's tunnel still carries bytes.
        bob_writer.write(b"still here")
        assert await read_exactly(bob_reader, 10) == b"still here"
        [left] = await live(engine, 1)
        assert left.username == BOB
        await eventually(lambda: a.server.active_clients == 1, what="alice's tunnels closing")


async def test_kill_refuses_bad_input_with_exit_code_2(
    database_url: str, engine: AsyncEngine
) -> None:
    bad_id = await cli("sessions", "kill", "not-a-uuid", "--database-url", database_url)
    assert bad_id.exit_code == 2 and "not a session id" in bad_id.output
    nothing = await cli("sessions", "kill", "--database-url", database_url)
    assert nothing.exit_code == 2 and "--user" in nothing.output
    bad_network = await cli(
        "sessions", "kill", "--user", "alice", "--client", "10.0.0.0/99",
        "--database-url", database_url,
    )  # fmt: skip
    assert bad_network.exit_code == 2 and "--client" in bad_network.output
    assert "Traceback" not in bad_network.output
