"""How long a graceful shutdown takes with many open tunnels (issue: lifecycle).

Everything on 127.0.0.1: a temporary store (SQLite file or PostgreSQL database), `socksauth
serve` as a subprocess, an echo target in a child process (bench.peers), and N tunnels opened
by this process through the proxy (each checked with one echoed byte). Then SIGTERM, timed
until the server exits, in two scenarios, each on a fresh server:

- ``clients-close``: right after the signal every client closes its tunnel (FIN); the server
  must notice all of them and exit without waiting for the grace period.
- ``grace-expires``: nobody closes; after ``--grace`` seconds the server closes every tunnel,
  flushes their audit rows, and exits.

    python -m bench.bench_shutdown                     # SQLite, 1,000 tunnels, grace 2 s
    python -m bench.bench_shutdown --store postgresql --workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import shutil
import signal
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass

from bench import peers
from bench.children import Child
from bench.socks5 import Route, open_connection, recv_exactly
from bench.target import DEFAULT_PG_ADMIN, Database, Server, make_workdir, raise_nofile

PASSWORD = "bench-Shutdown-3c1e"
# Handshakes in flight at once: below the server's 32 unauthenticated clients per address.
OPENING_CONCURRENCY = 24
EXIT_TIMEOUT_SECONDS = 120.0


@dataclass
class Result:
    scenario: str
    tunnels: int
    signal_to_exit_seconds: float
    last_close_to_exit_seconds: float | None
    server_stop_seconds: float | None  # the server's own "stopped in" figure
    closed_by_server: int
    outcomes: Counter[str]


async def open_tunnels(route: Route, target: tuple[str, int], count: int) -> list[socket.socket]:
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(OPENING_CONCURRENCY)

    async def one() -> socket.socket:
        async with gate:
            sock = await open_connection(loop, route, target)
            await loop.sock_sendall(sock, b"x")
            assert await recv_exactly(loop, sock, 1) == b"x"
            return sock

    return list(await asyncio.gather(*(one() for _ in range(count))))


async def ended(sock: socket.socket) -> None:
    """Returns once the proxy has ended this tunnel (FIN or reset)."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(ConnectionError):
        while await loop.sock_recv(sock, 4096):
            pass


def audit_outcomes(url: str) -> Counter[str]:
    from socksauth.store.audit import SqlAuditStore
    from socksauth.store.database import create_engine
    from socksauth.store.interfaces import AuditQuery

    async def read() -> Counter[str]:
        engine = create_engine(url)
        try:
            entries = await SqlAuditStore(engine).find_entries(AuditQuery(limit=None))
        finally:
            await engine.dispose()
        return Counter(entry.outcome or "open" for entry in entries if entry.command)

    return asyncio.run(read())


async def run_scenario(
    server: Server, scenario: str, echo: tuple[str, int], tunnels: int
) -> tuple[float, float | None, int]:
    """Open the tunnels, SIGTERM, time until exit: (signal → exit, last close → exit,
    tunnels the server ended)."""
    assert server.process is not None
    route = Route(server.address, "bench", PASSWORD)
    socks = await open_tunnels(route, echo, tunnels)
    print(f"  {scenario}: {len(socks)} tunnels open; SIGTERM", file=sys.stderr, flush=True)
    loop = asyncio.get_running_loop()
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    last_close = None
    closed_by_server = 0
    try:
        if scenario == "clients-close":
            for sock in socks:
                sock.shutdown(socket.SHUT_WR)
            # The echo target answers the FIN with its own; the proxy passes it on.
            await asyncio.gather(*(ended(sock) for sock in socks))
            last_close = time.monotonic()
        else:
            async with asyncio.timeout(EXIT_TIMEOUT_SECONDS):
                await asyncio.gather(*(ended(sock) for sock in socks))
            closed_by_server = len(socks)
        code = await loop.run_in_executor(None, server.process.wait, EXIT_TIMEOUT_SECONDS)
        exited = time.monotonic()
    finally:
        for sock in socks:
            sock.close()
    assert code == 0, f"exit code {code}"
    return (
        exited - signalled,
        None if last_close is None else exited - last_close,
        closed_by_server,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--tunnels", type=int, default=1000)
    parser.add_argument("--grace", type=float, default=2.0, help="shutdown grace, seconds")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--pg-admin", default=DEFAULT_PG_ADMIN)
    args = parser.parse_args(argv)
    raise_nofile()
    workdir = make_workdir()
    peer = Child(peers.main, "bench-peers")
    database = Database(args.store, workdir, pg_admin=args.pg_admin)
    results = []
    try:
        echo = ("127.0.0.1", peer.conn.recv()["echo"])
        database.create()
        database.add_user("bench", PASSWORD)
        for scenario in ("clients-close", "grace-expires"):
            before = audit_outcomes(database.url)
            server = Server(
                database,
                scenario,
                ["--shutdown-grace", str(args.grace), "--workers", str(args.workers)],
            )
            server.start()
            try:
                total, after_close, by_server = asyncio.run(
                    run_scenario(server, scenario, echo, args.tunnels)
                )
            finally:
                server.stop()
            assert server.log_path is not None
            log = server.log_path.read_text(errors="replace")
            stops = [float(s) for s in re.findall(r"stopped in (\d+\.\d+) s", log)]
            outcomes = audit_outcomes(database.url) - before
            results.append(
                Result(
                    scenario,
                    args.tunnels,
                    total,
                    after_close,
                    max(stops) if stops else None,
                    by_server,
                    outcomes,
                )
            )
    finally:
        peer.close()
        database.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"\nshutdown with {args.tunnels} open tunnels, store {args.store}, "
        f"--workers {args.workers}, --shutdown-grace {args.grace:g}"
    )
    print(
        f"{'scenario':<15} {'SIGTERM→exit':>13} {'last close→exit':>16} "
        f"{'server stop':>12} {'closed by server':>17}  audit outcomes"
    )
    for result in results:
        after = (
            "-"
            if result.last_close_to_exit_seconds is None
            else f"{result.last_close_to_exit_seconds:.3f} s"
        )
        stop = "-" if result.server_stop_seconds is None else f"{result.server_stop_seconds:.2f} s"
        print(
            f"{result.scenario:<15} {result.signal_to_exit_seconds:>11.3f} s "
            f"{after:>16} {stop:>12} {result.closed_by_server:>17}  "
            + ", ".join(f"{k}={v}" for k, v in sorted(result.outcomes.items()))
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
