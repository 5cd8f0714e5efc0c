"""Live sessions end to end, on SQLite and PostgreSQL: a tunnel held open shows its bytes so
far and its rate in `socksauth sessions` while it runs, and leaves the list when it ends."""

from __future__ import annotations

import asyncio
import json
import time

from click.testing import CliRunner, Result
from e2e import EchoServer, ProxyFactory, eventually, open_tunnel, read_exactly
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.cli import main
from socksauth.store.interfaces import AuditEntry, SessionQuery
from socksauth.store.sessions import SqlSessionStore

CHUNK = b"x" * 65536


async def cli(*args: str) -> Result:
    """``socksauth ARGS`` in-process, in a thread: the command runs a loop of its own."""
    runner = CliRunner(env={"SOCKSAUTH_DATABASE_URL": None})
    return await asyncio.to_thread(runner.invoke, main, list(args))


async def wait_for_session(
    sessions: SqlSessionStore, condition: object, timeout: float = 5.0
) -> AuditEntry:
    """The one live session, once ``condition(session)`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        live = await sessions.live_sessions(SessionQuery())
        if live and condition(live[0]):  # type: ignore[operator]
            return live[0]
        assert time.monotonic() < deadline, f"no such session within {timeout} s: {live}"
        await asyncio.sleep(0.05)


async def test_an_open_tunnel_shows_its_bytes_so_far_and_rate_then_leaves_the_list(
    start_proxy: ProxyFactory, engine: AsyncEngine, echo_server: EchoServer, database_url: str
) -> None:
    sessions = SqlSessionStore(engine)
    async with start_proxy(node_name="node-a", audit_interim_seconds=1.0) as proxy:
        reader, writer, reply = await open_tunnel(proxy.port, echo_server.host, echo_server.port)
        try:
            assert reply.reply == 0
            # Listed as soon as its opening row is written (0.5 s batches).
            opened = await wait_for_session(sessions, lambda s: True)
            assert (opened.username, opened.command, opened.node) == ("alice", "connect", "node-a")
            moving = await wait_for_session_while_sending(
                sessions,
                reader,
                writer,
                lambda s: s.bytes_from_client >= 4 * len(CHUNK) and (s.rate_from_client or 0) > 0,
            )
            assert moving.bytes_to_client >= 4 * len(CHUNK)
            assert (moving.rate_to_client or 0) > 0
            result = await cli("sessions", "--format", "json", "--database-url", database_url)
            assert result.exit_code == 0, result.output
            [row] = json.loads(result.output)
            assert row["id"] == str(opened.id) and row["user"] == "alice"
            assert row["bytes_from_client"] >= 4 * len(CHUNK)
            table = await cli("sessions", "--user", "alice", "--database-url", database_url)
            assert str(opened.id) in table.output and "KiB" in table.output
            # Nothing moves any more: the rate drops to zero at the next interim update.
            await wait_for_session(sessions, lambda s: s.rate_from_client == 0.0)
        finally:
            writer.close()
        await eventually(lambda: proxy.server.active_clients == 0, what="the tunnel closing")
        await wait_for_session_gone(sessions)
        nobody = await cli("sessions", "--user", "bob", "--database-url", database_url)
        assert nobody.exit_code == 0 and str(opened.id) not in nobody.output


async def wait_for_session_gone(sessions: SqlSessionStore, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while await sessions.live_sessions(SessionQuery()):
        assert time.monotonic() < deadline, "the ended tunnel is still listed"
        await asyncio.sleep(0.05)


async def wait_for_session_while_sending(
    sessions: SqlSessionStore,
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    condition: object,
) -> AuditEntry:
    """Echo a chunk every 50 ms (bounded: at most 10 s) until the session meets ``condition``."""

    async def send() -> None:
        for _ in range(200):
            writer.write(CHUNK)
            await read_exactly(reader, len(CHUNK))
            await asyncio.sleep(0.05)

    sending = asyncio.create_task(send())
    try:
        return await wait_for_session(sessions, condition, timeout=8.0)
    finally:
        sending.cancel()
        await asyncio.gather(sending, return_exceptions=True)
