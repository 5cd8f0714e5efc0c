"""Quota benchmark: what quota accounting costs (1-tunnel throughput and the exchange rate with a
quota on vs off, same node, interleaved rounds), and how far a quota is overshot when two nodes
on one PostgreSQL database push one user's traffic at full speed.

    python -m bench.bench_quota [--store postgresql|sqlite] [--rounds 3] [--seconds 2]

Cost: two accounts on one `socksauth serve --workers 1` node, ``plain`` without a quota and
``metered`` with one it never reaches (1 TiB/month); the load generator and the loopback peers
run in processes of their own (bench/load.py, bench/peers.py), as in bench/run.py. Each round
measures both accounts, in alternating order.

Overshoot: a third account with a quota of ``--quota-mb`` MB/day; one tunnel through each of two
nodes uploads to the sink as fast as it can until the proxy ends it. Once the nodes have
stopped (and flushed), the database's count minus the quota is the overshoot in bytes; in
seconds, that overshoot at the measured aggregate rate. Loopback only; bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import load, peers
from bench.bench_audit import temporary_database
from bench.bench_propagation import free_port
from bench.run import Child
from bench.socks5 import Route, open_connection
from socksauth.auth import passwords
from socksauth.server.quota import quota_statuses
from socksauth.store import migrate
from socksauth.store.database import create_engine
from socksauth.store.interfaces import NewRule
from socksauth.store.rules import SqlRuleStore
from socksauth.store.usage import SqlTrafficUsage
from socksauth.store.users import SqlUserStore

PASSWORD = "bench-quota-password"
PLAIN, METERED, CAPPED = "plain", "metered", "capped"
CHUNK = b"\x00" * (256 << 10)
UPLOAD_LIMIT_SECONDS = 20.0


@contextlib.contextmanager
def node(database_url: str, name: str, port: int, workdir: Path) -> Iterator[None]:
    log = (workdir / f"{name}.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "socksauth", "serve", "--workers", "1",
            "--listen", f"127.0.0.1:{port}", "--node-name", name, "--log-level", "WARNING",
        ],
        env={**os.environ, "SOCKSAUTH_DATABASE_URL": database_url},
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        yield
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@contextlib.asynccontextmanager
async def database(store: str, workdir: Path, admin_url: str) -> AsyncIterator[str]:
    if store == "sqlite":
        yield f"sqlite+aiosqlite:///{workdir / 'bench.sqlite3'}"
    else:
        async with temporary_database(admin_url) as url:
            yield url


async def prepare(url: str, quota_bytes: int) -> None:
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine)
        users = SqlUserStore(engine)
        hashed = passwords.hash_password(PASSWORD)
        for name in (PLAIN, METERED, CAPPED):
            await users.add_user(name, hashed)
        await users.set_quota(METERED, 1 << 40, "month")
        await users.set_quota(CAPPED, quota_bytes, "day")
        await SqlRuleStore(engine).add_rule(NewRule(action="allow", cidr="127.0.0.1/32"))
    finally:
        await engine.dispose()


def measure_cost(port: int, ports: dict[str, int], rounds: int, seconds: float) -> dict[str, Any]:
    client = Child(load.main, "bench-load")
    results: dict[str, dict[str, list[float]]] = {
        user: {"tp1_up": [], "ex16": []} for user in (PLAIN, METERED)
    }
    try:
        for index in range(rounds):
            order = [PLAIN, METERED] if index % 2 == 0 else [METERED, PLAIN]
            for user in order:
                route = Route(proxy=("127.0.0.1", port), user=user, password=PASSWORD)
                sink, echo = ("127.0.0.1", ports["sink"]), ("127.0.0.1", ports["echo"])
                tp = client.call("throughput", route=route, target=sink, direction="up",
                                 tunnels=1, cap_bytes=4 << 30, seconds=seconds)  # fmt: skip
                ex = client.call("exchange", route=route, target=echo, clients=16,
                                 seconds=seconds, max_count=100_000)  # fmt: skip
                results[user]["tp1_up"].append(tp["mb_per_s"])
                results[user]["ex16"].append(ex["per_s"])
                print(f"  round {index + 1} {user:>8}: 1 tunnel {tp['mb_per_s']:8.1f} MB/s, "
                      f"exchange@16 {ex['per_s']:7.0f}/s", flush=True)  # fmt: skip
    finally:
        client.close()
    return results


async def upload_until_cut(port: int, sink: int) -> tuple[int, float]:
    """Bytes handed to the kernel and seconds until the proxy ended the tunnel."""
    loop = asyncio.get_running_loop()
    route = Route(proxy=("127.0.0.1", port), user=CAPPED, password=PASSWORD)
    sock = await open_connection(loop, route, ("127.0.0.1", sink))
    sent, started = 0, time.monotonic()
    try:
        while time.monotonic() - started < UPLOAD_LIMIT_SECONDS:
            await loop.sock_sendall(sock, CHUNK)
            sent += len(CHUNK)
    except OSError:
        pass
    finally:
        sock.close()
    return sent, time.monotonic() - started


async def run(store: str, rounds: int, seconds: float, quota_mb: int, admin_url: str) -> None:
    quota = quota_mb * 1_000_000
    peer = Child(peers.main, "bench-peers")
    ports = peer.conn.recv()
    try:
        with tempfile.TemporaryDirectory(prefix="socksauth-quota-") as tmp:
            workdir = Path(tmp)
            async with database(store, workdir, admin_url) as url:
                await prepare(url, quota)
                port_a, port_b = free_port(), free_port()
                with node(url, "node-a", port_a, workdir):
                    await wait_for(port_a, ports["sink"])
                    print(f"{store}: quota accounting cost ({rounds} rounds of {seconds:g} s)")
                    cost = await asyncio.to_thread(measure_cost, port_a, ports, rounds, seconds)
                    with node(url, "node-b", port_b, workdir):
                        await wait_for(port_b, ports["sink"])
                        started = time.monotonic()
                        (sent_a, cut_a), (sent_b, cut_b) = await asyncio.gather(
                            upload_until_cut(port_a, ports["sink"]),
                            upload_until_cut(port_b, ports["sink"]),
                        )
                        elapsed = time.monotonic() - started
                used = await counted(url)
    finally:
        with contextlib.suppress(OSError):
            peer.conn.send("stop")
        peer.process.join(5)
    for key, label, unit in (("tp1_up", "1-tunnel throughput", "MB/s"),
                             ("ex16", "exchange rate @16", "/s")):  # fmt: skip
        off = statistics.median(cost[PLAIN][key])
        on = statistics.median(cost[METERED][key])
        # Per round (both measured back to back), then the median: a busy host's swings
        # between rounds cancel out.
        ratios = sorted(m / p for m, p in zip(cost[METERED][key], cost[PLAIN][key], strict=True))
        print(f"  {label}: quota off {off:.1f} {unit}, on {on:.1f} {unit} (medians); on/off "
              f"per round: median {statistics.median(ratios):.3f} "
              f"[{ratios[0]:.3f}-{ratios[-1]:.3f}]")  # fmt: skip
    rate = used / max(cut_a, cut_b)
    over = used - quota
    print(f"  two nodes, one user at full speed: {quota / 1e6:.0f} MB quota, counted "
          f"{used / 1e6:.1f} MB (sent {(sent_a + sent_b) / 1e6:.1f} MB in {elapsed:.2f} s): "
          f"overshoot {over / 1e6:.1f} MB = {over / rate:.2f} s at {rate / 1e6:.0f} MB/s; "
          f"tunnels ended after {cut_a:.2f} s and {cut_b:.2f} s")  # fmt: skip


async def wait_for(port: int, sink: int) -> None:
    """Until the node serves a tunnel to the sink."""
    deadline = time.monotonic() + 30
    loop = asyncio.get_running_loop()
    while True:
        try:
            route = Route(proxy=("127.0.0.1", port), user=PLAIN, password=PASSWORD)
            sock = await open_connection(loop, route, ("127.0.0.1", sink))
            sock.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"node on port {port} is not serving") from None
            await asyncio.sleep(0.1)


async def counted(url: str) -> int:
    engine = create_engine(url)
    try:
        users = await SqlUserStore(engine).list_users()
        statuses = await quota_statuses(users, SqlTrafficUsage(engine), datetime.now(UTC))
        return statuses[CAPPED].used
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--quota-mb", type=int, default=300)
    parser.add_argument(
        "--admin-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    )
    args = parser.parse_args()
    asyncio.run(
        run(args.store, min(args.rounds, 20), min(args.seconds, 10.0), args.quota_mb,
            args.admin_url)
    )  # fmt: skip


if __name__ == "__main__":
    main()
