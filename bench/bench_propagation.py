"""Propagation benchmark: how long after a password change committed through one node (or the
CLI) another node refuses the old password, with two `socksauth serve` processes on one store.

    python -m bench.bench_propagation [--store postgresql|sqlite|both] [--changes 20]

Each round changes the user's password in the database, then logs in with the old password on
node B every 2 ms until it is refused; the delay is from the commit to that refusal. Until the
change arrives the old password is a verification-cache hit (microseconds); the refusal itself
costs one argon2 verification (the new hash, or the dummy), which is part of the figure. Every
attempt comes from its own 127.0.0.x source address, so the login throttle never delays one.
Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from bench.bench_audit import temporary_database
from socksauth.auth import passwords
from socksauth.store import migrate
from socksauth.store.database import create_engine
from socksauth.store.interfaces import NewRule
from socksauth.store.rules import SqlRuleStore
from socksauth.store.users import SqlUserStore

USER = "bench"
TIMEOUT_SECONDS = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def node(
    database_url: str, name: str, port: int, workdir: Path
) -> Iterator[subprocess.Popen[bytes]]:
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
        yield process
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


_sources = iter(f"127.0.{b}.{c}" for b in range(1, 250) for c in range(2, 250))


async def login(port: int, password: str) -> bool:
    """One RFC 1929 login from a fresh source address; True when accepted."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    try:
        sock.setblocking(False)
        sock.bind((next(_sources), 0))
        await loop.sock_connect(sock, ("127.0.0.1", port))
        u, p = USER.encode(), password.encode()
        await loop.sock_sendall(
            sock, b"\x05\x01\x02\x01" + bytes([len(u)]) + u + bytes([len(p)]) + p
        )
        answer = b""
        while len(answer) < 4:
            chunk = await loop.sock_recv(sock, 4 - len(answer))
            if not chunk:
                break
            answer += chunk
        return answer == b"\x05\x02\x01\x00"
    finally:
        sock.close()


async def wait_until_serving(port: int, password: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if await login(port, password):
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"node on port {port} is not serving")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def database(store: str, workdir: Path, admin_url: str) -> AsyncIterator[str]:
    if store == "sqlite":
        yield f"sqlite+aiosqlite:///{workdir / 'bench.sqlite3'}"
    else:
        async with temporary_database(admin_url) as url:
            yield url


async def measure(store: str, changes: int, admin_url: str) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="socksauth-propagation-") as tmp:
        workdir = Path(tmp)
        async with database(store, workdir, admin_url) as url:
            engine = create_engine(url)
            try:
                await migrate.upgrade(engine)
                users = SqlUserStore(engine)
                hashes = [passwords.hash_password(f"password-{i:04d}") for i in range(changes + 1)]
                await users.add_user(USER, hashes[0])
                await SqlRuleStore(engine).add_rule(NewRule(action="allow", cidr="127.0.0.1/32"))
                port_a, port_b = free_port(), free_port()
                with node(url, "node-a", port_a, workdir), node(url, "node-b", port_b, workdir):
                    await wait_until_serving(port_a, "password-0000")
                    await wait_until_serving(port_b, "password-0000")
                    delays = []
                    for i in range(1, changes + 1):
                        old = f"password-{i - 1:04d}"
                        assert await login(port_b, old)  # cached on node B
                        await users.set_password_hash(USER, hashes[i])
                        committed = time.monotonic()
                        while await login(port_b, old):
                            if time.monotonic() - committed > TIMEOUT_SECONDS:
                                raise RuntimeError("the change did not reach node B in time")
                            await asyncio.sleep(0.002)
                        delays.append(time.monotonic() - committed)
                        # Log in with the new one on both, so the next round starts cached.
                        await wait_until_serving(port_a, f"password-{i:04d}")
                        await wait_until_serving(port_b, f"password-{i:04d}")
                    return delays
            finally:
                await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("postgresql", "sqlite", "both"), default="both")
    parser.add_argument("--changes", type=int, default=20)
    parser.add_argument(
        "--admin-url", default="postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    )
    args = parser.parse_args()
    stores = ["postgresql", "sqlite"] if args.store == "both" else [args.store]
    for store in stores:
        delays = asyncio.run(measure(store, min(args.changes, 200), args.admin_url))
        ms = sorted(d * 1000 for d in delays)
        print(
            f"{store}: old password refused on the other node after "
            f"median {statistics.median(ms):.1f} ms, min {ms[0]:.1f}, max {ms[-1]:.1f} "
            f"({len(ms)} changes)"
        )


if __name__ == "__main__":
    main()
