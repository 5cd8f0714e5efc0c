"""Audit benchmark: rows/s the audit writer sustains on PostgreSQL, and the connection rate of
the proxy with the audit on vs off in the same run.

    python bench/bench_audit.py [--admin-url postgresql+asyncpg://postgres@127.0.0.1:5432/postgres]
                                [--rows 200000] [--connections 3000] [--output FILE]

Creates a temporary database (and drops it), talks to loopback only, bounded in every loop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import secrets
import statistics
import struct
import tempfile
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from socksauth import app
from socksauth.audit import AuditLog, new_entry_id
from socksauth.auth import accounts
from socksauth.auth.user_cache import UserCache
from socksauth.config import ListenAddress, Settings
from socksauth.connection_record import ConnectionObserver
from socksauth.store import migrate
from socksauth.store.audit import SqlAuditStore
from socksauth.store.database import create_engine
from socksauth.store.interfaces import AuditEntry
from socksauth.store.users import SqlUserStore

USER, PASSWORD = "bench", "bench-Password-1234"
PAYLOAD = b"0123456789abcdef0123456789abcdef"  # 32 bytes


@contextlib.asynccontextmanager
async def temporary_database(admin_url: str) -> AsyncIterator[str]:
    admin = make_url(admin_url)
    name = f"socksauth_bench_{secrets.token_hex(6)}"
    engine = create_async_engine(admin, isolation_level="AUTOCOMMIT", poolclass=NullPool)
    async with engine.connect() as conn:
        await conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield admin.set(database=name).render_as_string(hide_password=False)
    finally:
        async with engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        await engine.dispose()


def entry(index: int, started: datetime, *, done: bool) -> AuditEntry:
    return AuditEntry(
        id=new_entry_id(),
        node="bench",
        client_host="127.0.0.1",
        client_port=30000 + index % 30000,
        started_at=started,
        username=f"user{index % 50}",
        command="connect",
        target_host=f"host{index % 1000}.example",
        target_port=443,
        dialed="192.0.2.1:443",
        reply=0,
        outcome="closed" if done else None,
        ended_at=started + timedelta(seconds=1) if done else None,
        duration_seconds=1.0 if done else None,
        bytes_from_client=1000 + index if done else 0,
        bytes_to_client=50000 + index if done else 0,
    )


# Sustained, not burst: the producer waits while this many entries are queued, so the figure
# is what the writer drains, not spill-file throughput (a burst past the memory limit spills).
QUEUED_CEILING = 20_000


async def paced(log: AuditLog) -> None:
    if log.buffered >= QUEUED_CEILING:
        async with asyncio.timeout(60):
            while log.buffered >= QUEUED_CEILING // 2:
                await asyncio.sleep(0.005)


async def writer_throughput(url: str, rows: int, spill_dir: Path) -> dict[str, float]:
    """Rows/s through AuditLog into PostgreSQL: finished rows, then open rows + completions."""
    engine = create_engine(url)
    results: dict[str, float] = {}
    try:
        now = datetime.now(UTC)
        finished = [entry(i, now, done=True) for i in range(rows)]
        log = AuditLog(SqlAuditStore(engine), node="bench", spill_path=spill_dir / "a.jsonl")
        async with log:
            start = time.perf_counter()
            for item in finished:
                log.record(item)
                await paced(log)
            assert await log.flush()
            assert log.spilled == 0
            results["finished_rows_per_second"] = rows / (time.perf_counter() - start)

        opens = [entry(i, now, done=False) for i in range(rows)]
        log = AuditLog(SqlAuditStore(engine), node="bench2", spill_path=spill_dir / "b.jsonl")
        async with log:
            start = time.perf_counter()
            for item in opens:
                log.record(item)
                await paced(log)
            assert await log.flush()
            for item in opens:
                values = {name: getattr(item, name) for name in item.__dataclass_fields__}
                values.update(
                    outcome="closed",
                    ended_at=now + timedelta(seconds=2),
                    duration_seconds=2.0,
                    bytes_from_client=10,
                    bytes_to_client=20,
                )
                log.record(AuditEntry(**values))
                await paced(log)
            assert await log.flush()
            assert log.spilled == 0
            results["open_then_complete_writes_per_second"] = (
                2 * rows / (time.perf_counter() - start)
            )
    finally:
        await engine.dispose()
    return results


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


GREETING = bytes((5, 1, 2))
CREDENTIALS = bytes((1, len(USER))) + USER.encode() + bytes((len(PASSWORD),)) + PASSWORD.encode()


async def one_connection(proxy_port: int, echo_port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
    try:
        writer.write(GREETING)
        assert await reader.readexactly(2) == b"\x05\x02"
        writer.write(CREDENTIALS)
        assert await reader.readexactly(2) == b"\x01\x00"
        writer.write(b"\x05\x01\x00\x01\x7f\x00\x00\x01" + struct.pack("!H", echo_port))
        reply = await reader.readexactly(10)
        assert reply[1] == 0, reply
        writer.write(PAYLOAD)
        assert await reader.readexactly(len(PAYLOAD)) == PAYLOAD
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def connection_rate(proxy_port: int, echo_port: int, count: int, concurrency: int) -> float:
    queue = iter(range(count))

    async def worker() -> None:
        for _ in queue:
            await one_connection(proxy_port, echo_port)

    start = time.perf_counter()
    async with asyncio.timeout(600):
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return count / (time.perf_counter() - start)


@contextlib.asynccontextmanager
async def proxy(
    url: str, audit: bool, spill_dir: Path
) -> AsyncIterator[tuple[int, AuditLog | None]]:
    """app.running_server's proxy, from the same builders, with or without the audit observer;
    without the destination policy and limits (the echo target is on loopback, which the
    policy protects) and the admin listener."""
    settings = Settings(
        database_url=url,
        listen=(ListenAddress(host="127.0.0.1", port=0),),
        node_name="bench-proxy",
        audit_spill_path=spill_dir / "proxy.jsonl",
    )
    async with contextlib.AsyncExitStack() as stack:
        engine = await app.enter_engine(stack, url)
        users = SqlUserStore(engine)
        authenticator = await app.enter_authenticator(stack, settings, UserCache(users), users)
        observer: ConnectionObserver | None = None
        audit_log = None
        if audit:
            audit_log = await app.enter_audit_log(stack, settings, engine)
            observer = await app.enter_audit_observer(stack, settings, audit_log)
        server = await app.enter_proxy_server(stack, settings, authenticator, observer)
        yield server.bound[0].port, audit_log


async def main(args: argparse.Namespace) -> dict[str, Any]:
    spill_dir = Path(tempfile.mkdtemp(prefix="socksauth-bench-"))
    async with temporary_database(args.admin_url) as url:
        engine = create_engine(url)
        await migrate.upgrade(engine)
        await accounts.add_user(SqlUserStore(engine), USER, PASSWORD)
        await engine.dispose()

        writer = await writer_throughput(url, args.rows, spill_dir)

        echo_server = await asyncio.start_server(echo, "127.0.0.1", 0)
        echo_port = echo_server.sockets[0].getsockname()[1]
        rates: dict[str, list[float]] = {"off": [], "on": []}
        written = 0
        for round_ in range(args.rounds):
            for mode in ("off", "on") if round_ % 2 == 0 else ("on", "off"):
                async with proxy(url, mode == "on", spill_dir) as (port, audit_log):
                    await one_connection(port, echo_port)  # warm the verification cache
                    rates[mode].append(
                        await connection_rate(port, echo_port, args.connections, args.concurrency)
                    )
                if audit_log is not None:
                    written += audit_log.written
        echo_server.close()
        await echo_server.wait_closed()

    on, off = statistics.median(rates["on"]), statistics.median(rates["off"])
    return {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "rows": args.rows,
        **{key: round(value) for key, value in writer.items()},
        "connections_per_round": args.connections,
        "concurrency": args.concurrency,
        "rounds": args.rounds,
        "connections_per_second_audit_off": [round(rate) for rate in rates["off"]],
        "connections_per_second_audit_on": [round(rate) for rate in rates["on"]],
        "median_off": round(off),
        "median_on": round(on),
        "ratio_on_vs_off": round(on / off, 3),
        "audit_rows_written_during_rate_test": written,
    }


def report(result: dict[str, Any]) -> None:
    print(f"{'audit writer, PostgreSQL (' + str(result['rows']) + ' rows)':<52}")
    print(
        f"  finished rows/s (one INSERT each)            {result['finished_rows_per_second']:>10}"
    )
    print(
        f"  writes/s, open row + later completion         "
        f"{result['open_then_complete_writes_per_second']:>10}"
    )
    print(f"connection rate (handshake + 32-byte echo, {result['concurrency']} concurrent)")
    print(f"  audit off, connections/s (median)              {result['median_off']:>10}")
    print(f"  audit on,  connections/s (median)              {result['median_on']:>10}")
    print(f"  ratio on / off                                 {result['ratio_on_vs_off']:>10}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--admin-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    )
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--connections", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).with_name("results")
        / f"audit-{time.strftime('%Y%m%d-%H%M%S')}.json",
    )
    arguments = parser.parse_args()
    outcome = app.run(main(arguments))
    report(outcome)
    arguments.output.parent.mkdir(parents=True, exist_ok=True)
    arguments.output.write_text(json.dumps(outcome, indent=2) + "\n")
    print(f"written to {arguments.output}")
