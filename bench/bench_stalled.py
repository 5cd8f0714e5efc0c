"""What stalled clients cost the proxy: N tunnels to a target that pushes as fast as it can,
whose clients never read (issue 12, item 3).

Everything on 127.0.0.1: a temporary SQLite store, `socksauth serve --workers 1` as a
subprocess, the streaming source of bench.peers in a child process, and N tunnels opened by
this process, each sending one byte (which starts the source) and then reading nothing.
Measured: the server's RSS before the tunnels and once it stops growing (no growth for 2 s,
at most 30 s), and the difference per tunnel.

    python -m bench.bench_stalled                     # 50 and 500 tunnels
    python -m bench.bench_stalled --tunnels 50 500 2000 --serve-args="--relay-memory-budget 64MiB"
"""

from __future__ import annotations

import argparse
import asyncio
import shlex
import shutil
import socket
import sys
import time

from bench import peers
from bench.children import Child
from bench.socks5 import Route, open_connection
from bench.target import Database, Server, make_workdir, raise_nofile

PASSWORD = "bench-Stalled-9a4e"
OPENING_CONCURRENCY = 24
SETTLE_SECONDS = 2.0
MAX_WAIT_SECONDS = 30.0


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def open_stalled(route: Route, target: tuple[str, int], count: int) -> list[socket.socket]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(OPENING_CONCURRENCY)

    async def one() -> socket.socket:
        async with gate:
            sock = await open_connection(loop, route, target)
            await loop.sock_sendall(sock, b"x")  # starts the source; then we never read
            return sock

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def warm_up(route: Route, target: tuple[str, int]) -> None:
    loop = asyncio.get_running_loop()
    sock = await open_connection(loop, route, target)
    await loop.sock_sendall(sock, b"x")
    await loop.sock_recv(sock, 65536)
    sock.close()


def settle(pid: int) -> tuple[int, float]:
    """RSS once it has not grown for SETTLE_SECONDS (KiB), and how long that took."""
    started = time.monotonic()
    peak, since = rss_kib(pid), time.monotonic()
    while time.monotonic() - started < MAX_WAIT_SECONDS:
        time.sleep(0.25)
        now = rss_kib(pid)
        if now > peak:
            peak, since = now, time.monotonic()
        elif time.monotonic() - since >= SETTLE_SECONDS:
            break
    return peak, time.monotonic() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tunnels", type=int, nargs="+", default=[50, 500])
    parser.add_argument("--serve-args", default="", help="extra `socksauth serve` options")
    args = parser.parse_args(argv)
    raise_nofile()
    workdir = make_workdir()
    peer = Child(peers.main, "bench-peers")
    database = Database("sqlite", workdir)
    rows = []
    try:
        source = ("127.0.0.1", peer.conn.recv()["source"])
        database.create()
        database.add_user("bench", PASSWORD)
        for count in args.tunnels:
            server = Server(
                database, f"stalled-{count}", ["--workers", "1", *shlex.split(args.serve_args)]
            )
            server.start()
            try:
                route = Route(server.address, "bench", PASSWORD)
                # One tunnel first: the login's argon2 verification (19 MiB in a thread's
                # arena) and the first allocations are not the stalled tunnels' cost.
                asyncio.run(warm_up(route, source))
                time.sleep(0.5)
                before = rss_kib(server.pid)
                socks = asyncio.run(open_stalled(route, source, count))
                after, waited = settle(server.pid)
                rows.append((count, before, after, waited))
                for sock in socks:
                    sock.close()
            finally:
                server.stop()
    finally:
        peer.close()
        database.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nstalled clients, serve {args.serve_args or '(defaults)'}")
    print(
        f"{'tunnels':>8} {'RSS before':>11} {'RSS after':>11} {'per tunnel':>11} {'settled in':>10}"
    )
    for count, before, after, waited in rows:
        print(
            f"{count:>8} {before / 1024:>7.1f} MiB {after / 1024:>7.1f} MiB "
            f"{(after - before) / count:>7.0f} KiB {waited:>8.1f} s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
