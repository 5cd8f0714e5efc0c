"""The audit of a running proxy: real clients on loopback, rows and `socksauth stats` exact."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
from collections import Counter
from pathlib import Path

import pytest
from audit_helpers import dump_database, outage
from click.testing import CliRunner
from e2e import (
    ALICE,
    ALICE_PASSWORD,
    BOB,
    BOB_PASSWORD,
    WAIT_SECONDS,
    EchoServer,
    ProxyFactory,
    credentials,
    eventually,
    greeting,
    raw_connection,
    read_exactly,
    read_until_closed,
)
from python_socks.async_.asyncio import Proxy
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.cli import main
from socksauth.store.audit import SqlAuditStore
from socksauth.store.database import create_engine
from socksauth.store.interfaces import OPEN, AuditEntry, AuditQuery, NewRule
from socksauth.store.rules import SqlRuleStore
from socksauth.store.users import SqlUserStore

SOCKSAUTH = Path(sys.executable).with_name("socksauth")


async def tunnel_round_trip(
    proxy_port: int, username: str, password: str, echo: EchoServer, payload: bytes
) -> tuple[int, int]:
    """Through python-socks: send ``payload``, FIN, read the echo to the end; (sent, received)."""
    client = Proxy.from_url(f"socks5://{username}:{password}@127.0.0.1:{proxy_port}")
    async with asyncio.timeout(WAIT_SECONDS):
        sock = await client.connect(dest_host=echo.host, dest_port=echo.port)
        reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(payload)
        writer.write_eof()
        received = await read_until_closed(reader)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert received == payload
    return len(payload), len(received)


async def refused_login(proxy_port: int, username: str, password: str) -> int:
    """A login the proxy refuses; returns the client's port (as the audit must show it)."""
    async with raw_connection(proxy_port) as (reader, writer):
        writer.write(greeting(0x02))
        assert await read_exactly(reader, 2) == b"\x05\x02"
        writer.write(credentials(username, password))
        assert await read_exactly(reader, 2) == b"\x01\x01"
        assert await read_until_closed(reader) == b""
        port: int = writer.get_extra_info("sockname")[1]
        return port


async def read_entries(database_url: str) -> list[AuditEntry]:
    engine = create_engine(database_url)
    try:
        return list(await SqlAuditStore(engine).find_entries(AuditQuery(limit=None)))
    finally:
        await engine.dispose()


def cli(*args: str) -> str:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


async def test_n_and_m_connections_are_counted_exactly_with_their_bytes(
    start_proxy: ProxyFactory, echo_server: EchoServer, database_url: str
) -> None:
    n_alice, m_bob = 7, 4
    sent: Counter[str] = Counter()
    received: Counter[str] = Counter()
    async with start_proxy() as proxy:
        jobs = [(ALICE, ALICE_PASSWORD, 1000 + 17 * i) for i in range(n_alice)]
        jobs += [(BOB, BOB_PASSWORD, 5000 + 3 * i) for i in range(m_bob)]
        results = await asyncio.gather(
            *(
                tunnel_round_trip(proxy.port, user, password, echo_server, os.urandom(size))
                for user, password, size in jobs
            )
        )
        for (user, _, _), (out, back) in zip(jobs, results, strict=True):
            sent[user] += out
            received[user] += back
    # Leaving the server flushed the audit: everything is in the table now.
    stats = {item.username: item for item in await SqlAuditStore(proxy.store._engine).user_stats()}
    assert stats[ALICE].connections == n_alice and stats[BOB].connections == m_bob
    for user in (ALICE, BOB):
        assert stats[user].bytes_from_client == sent[user]
        assert stats[user].bytes_to_client == received[user]
        assert stats[user].failed_logins == 0

    entries = await SqlAuditStore(proxy.store._engine).find_entries(AuditQuery(limit=None))
    assert len(entries) == n_alice + m_bob
    for entry in entries:
        assert entry.command == "connect" and entry.outcome == "closed" and entry.reply == 0
        assert (entry.target_host, entry.target_port) == (echo_server.host, echo_server.port)
        assert entry.dialed == f"{echo_server.host}:{echo_server.port}"
        assert entry.client_host == "127.0.0.1" and entry.node == proxy.settings.node_name
        assert entry.ended_at is not None and entry.ended_at >= entry.started_at

    output = await asyncio.to_thread(
        cli, "stats", "--since", "1h", "--format", "json", "--database-url", database_url
    )
    by_user = {row["user"]: row for row in json.loads(output)}
    assert by_user[ALICE]["connections"] == n_alice and by_user[BOB]["connections"] == m_bob
    assert by_user[ALICE]["bytes_from_client"] == sent[ALICE]
    assert by_user[BOB]["bytes_to_client"] == received[BOB]


async def test_failed_logins_are_recorded_with_name_and_address_but_never_the_password(
    start_proxy: ProxyFactory, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="socksauth")
    wrong, guessed = "Wrong-Password-4417", "Mallory-Guess-9920"
    async with start_proxy() as proxy:
        alice_port = await refused_login(proxy.port, ALICE, wrong)
        mallory_port = await refused_login(proxy.port, "mallory", guessed)
    engine = proxy.store._engine
    failures = await SqlAuditStore(engine).find_entries(AuditQuery(outcome="auth_failed"))
    found = {(e.username, e.client_host, e.client_port, e.command) for e in failures}
    assert found == {
        (ALICE, "127.0.0.1", alice_port, None),
        ("mallory", "127.0.0.1", mallory_port, None),
    }
    stats = {item.username: item for item in await SqlAuditStore(engine).user_stats()}
    assert stats[ALICE].failed_logins == 1 and stats[ALICE].connections == 0
    assert stats["mallory"].failed_logins == 1

    dump = await dump_database(engine)
    assert "mallory" in dump  # the dump does hold the audit rows
    listing = await asyncio.to_thread(
        cli, "audit", "--format", "csv", "--database-url", database_url
    )
    assert "mallory" in listing
    for password in (wrong, guessed, ALICE_PASSWORD):
        assert password not in dump
        assert password not in caplog.text
        assert password not in listing


async def test_a_long_tunnel_has_its_row_while_open(
    start_proxy: ProxyFactory, echo_server: EchoServer
) -> None:
    async with start_proxy() as proxy:
        store = SqlAuditStore(proxy.store._engine)
        client = Proxy.from_url(f"socks5://{ALICE}:{ALICE_PASSWORD}@127.0.0.1:{proxy.port}")
        sock = await client.connect(dest_host=echo_server.host, dest_port=echo_server.port)
        reader, writer = await asyncio.open_connection(sock=sock)
        writer.write(b"ping")
        assert await read_exactly(reader, 4) == b"ping"

        open_rows: list[object] = []

        async def poll() -> None:
            for _ in range(200):
                open_rows[:] = await store.find_entries(AuditQuery(outcome=OPEN))
                if open_rows:
                    return
                await asyncio.sleep(0.05)

        await poll()
        assert len(open_rows) == 1
        writer.write_eof()
        assert await read_until_closed(reader) == b""
        writer.close()
    (entry,) = await store.find_entries(AuditQuery())
    assert entry.outcome == "closed" and entry.bytes_from_client == 4


async def test_traffic_goes_on_while_the_database_is_down_and_every_entry_arrives_after(
    start_proxy: ProxyFactory, echo_server: EchoServer, database_url: str, tmp_path: Path
) -> None:
    payload = b"x" * 3000
    async with start_proxy(audit_spill_path=tmp_path / "spill.jsonl") as proxy:
        engine = proxy.store._engine
        # Tunnels opened before the outage, used and closed during it.
        client = Proxy.from_url(f"socks5://{ALICE}:{ALICE_PASSWORD}@127.0.0.1:{proxy.port}")
        streams = []
        for _ in range(5):
            sock = await client.connect(dest_host=echo_server.host, dest_port=echo_server.port)
            streams.append(await asyncio.open_connection(sock=sock))
        async with outage(database_url):
            for reader, writer in streams:
                writer.write(payload)
                writer.write_eof()
                assert await read_until_closed(reader) == payload
                writer.close()
            during = 0
            if engine.dialect.name == "sqlite":
                # The write lock leaves accounts readable: new logins work during the outage.
                for _ in range(6):
                    await tunnel_round_trip(proxy.port, BOB, BOB_PASSWORD, echo_server, payload)
                during = 6
            await eventually(lambda: proxy.server.active_clients == 0, what="all clients finished")
            await asyncio.sleep(1.5)  # a few flush rounds against the unavailable database
    # A new engine: the test's pooled connections were terminated with the outage.
    entries = await read_entries(database_url)
    assert len(entries) == 5 + during
    assert all(e.outcome == "closed" and e.bytes_from_client == 3000 for e in entries)
    assert all(e.bytes_to_client == 3000 for e in entries)


async def test_sigterm_during_load_leaves_every_connection_in_the_table(
    engine: AsyncEngine,
    user_store: SqlUserStore,
    echo_server: EchoServer,
    database_url: str,
    tmp_path: Path,
) -> None:
    # The destination policy protects loopback; the echo target lives there.
    await SqlRuleStore(engine).add_rule(NewRule(action="allow", cidr="127.0.0.0/8"), position=1)
    environment = dict(os.environ, XDG_STATE_HOME=str(tmp_path), XDG_DATA_HOME=str(tmp_path))
    # With several cores, several worker processes: each flushes its own audit on the SIGTERM
    # the supervisor forwards.
    process = await asyncio.create_subprocess_exec(
        str(SOCKSAUTH), "serve", "--listen", "127.0.0.1:0", "--database-url", database_url,
        # The held tunnels get this long to end on their own, then are closed as shutdown.
        "--shutdown-grace", "1",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE, env=environment,
    )  # fmt: skip
    assert process.stderr is not None
    log_lines: list[str] = []
    try:
        port = None
        async with asyncio.timeout(20):
            while port is None:
                line = (await process.stderr.readline()).decode()
                assert line, "socksauth serve exited early:\n" + "".join(log_lines)
                log_lines.append(line)
                if match := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                    port = int(match.group(1))

        async def drain() -> None:
            assert process.stderr is not None
            while line := await process.stderr.readline():
                log_lines.append(line.decode())

        drainer = asyncio.create_task(drain())
        completed = 12
        await asyncio.gather(
            *(
                tunnel_round_trip(port, ALICE, ALICE_PASSWORD, echo_server, b"y" * (100 + i))
                for i in range(completed)
            )
        )
        # Under load: tunnels still open when the signal comes.
        client = Proxy.from_url(f"socks5://{BOB}:{BOB_PASSWORD}@127.0.0.1:{port}")
        held = []
        for _ in range(4):
            sock = await client.connect(dest_host=echo_server.host, dest_port=echo_server.port)
            reader, writer = await asyncio.open_connection(sock=sock)
            writer.write(b"hold")
            assert await read_exactly(reader, 4) == b"hold"
            held.append(writer)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await process.wait() == 0
        await drainer
        for writer in held:
            writer.close()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    entries = await SqlAuditStore(engine).find_entries(AuditQuery(limit=None))
    outcomes = Counter(entry.outcome for entry in entries)
    assert outcomes == {"closed": completed, "shutdown": 4}, "".join(log_lines)
    assert all(entry.ended_at is not None for entry in entries)
    assert sorted(e.bytes_from_client for e in entries if e.username == ALICE) == [
        100 + i for i in range(completed)
    ]
    assert all(e.bytes_to_client == 4 for e in entries if e.username == BOB)
    assert ALICE_PASSWORD not in "".join(log_lines)
