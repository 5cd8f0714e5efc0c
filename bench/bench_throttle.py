"""Login-throttle benchmark: database writes under a flood of wrong passwords, and the rate
of warm logins with the throttle on and off.

    python -m bench.bench_throttle [--store sqlite|postgresql|both] [--seconds 10] [--rate 200]

The server runs in this process (app.running_server), so every statement its engine sends
is counted (SQLAlchemy's engine events): the throttle's (statements on ``login_throttle*``)
and all of them. The flood sends ``--rate`` wrong-password logins a second, paced, for
``--seconds``, from 50 loopback source addresses (127.0.1.x) over a rotating set of 500
usernames, so failures are counted on many pairs (the costliest case for the store: a single
guessed pair, ``--pattern pair``, is locked after 10 and then costs nothing). Then 16
clients make warm logins (one user, right password: a verification-cache hit) for 3 s, on
fresh servers with the throttle on and off, interleaved twice (the best of each is compared).
Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from bench.bench_audit import temporary_database
from socksauth import app
from socksauth.auth import accounts
from socksauth.config import ListenAddress, Settings
from socksauth.store import migrate
from socksauth.store.database import create_engine
from socksauth.store.users import SqlUserStore

USER, PASSWORD = "bench", "bench-Secret-8d1f"
GREETING = b"\x05\x01\x02"


def credentials(username: str, password: str) -> bytes:
    name, secret = username.encode(), password.encode()
    return bytes((1, len(name))) + name + bytes((len(secret),)) + secret


class Statements:
    """Counts what every engine of this process sends."""

    def __init__(self) -> None:
        self.throttle = 0
        self.total = 0
        self.commits = 0

    def statement(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        self.total += 1
        if "login_throttle" in statement:
            self.throttle += 1

    def commit(self, conn: Any) -> None:
        self.commits += 1

    def snapshot(self) -> tuple[int, int, int]:
        return self.throttle, self.total, self.commits


async def attempt(port: int, source: str, username: str, password: str) -> bytes:
    try:
        async with asyncio.timeout(15):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(source, 0)
            )
            try:
                writer.write(GREETING + credentials(username, password))
                answer = b""
                while len(answer) < 4 and (data := await reader.read(4 - len(answer))):
                    answer += data
                return answer
            finally:
                writer.close()
    except (OSError, TimeoutError):
        return b""


@contextlib.asynccontextmanager
async def database(store: str, workdir: Path) -> AsyncIterator[str]:
    if store == "sqlite":
        yield f"sqlite+aiosqlite:///{workdir / 'bench.sqlite3'}"
    else:
        async with temporary_database(
            "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
        ) as url:
            yield url


async def flood(port: int, rate: int, seconds: float, pattern: str) -> dict[str, int]:
    answers: dict[str, int] = {}
    tasks = []
    started = time.monotonic()
    total = int(rate * seconds)
    for index in range(total):
        # Paced: the index-th guess leaves at index / rate seconds.
        delay = started + index / rate - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        if pattern == "spray":
            source, username = f"127.0.1.{index % 50 + 1}", f"user{index % 500}"
        else:
            source, username = "127.0.1.1", USER
        tasks.append(asyncio.create_task(attempt(port, source, username, f"guess-{index}")))
    for answer in await asyncio.gather(*tasks):
        key = {b"\x05\x02\x01\x01": "refused", b"": "closed"}.get(answer, answer.hex() or "?")
        answers[key] = answers.get(key, 0) + 1
    return answers


async def warm_logins(port: int, seconds: float, clients: int = 16) -> float:
    done = 0
    deadline = time.monotonic() + seconds

    async def client() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            answer = await attempt(port, "127.0.0.1", USER, PASSWORD)
            assert answer == b"\x05\x02\x01\x00", answer
            done += 1

    await asyncio.gather(*(client() for _ in range(clients)))
    return done / seconds


async def measure(store: str, rate: int, seconds: float, pattern: str) -> None:
    counts = Statements()
    event.listen(Engine, "before_cursor_execute", counts.statement)
    event.listen(Engine, "commit", counts.commit)
    try:
        with tempfile.TemporaryDirectory() as directory:
            async with database(store, Path(directory)) as url:
                engine = create_engine(url)
                await migrate.upgrade(engine)
                await accounts.add_user(SqlUserStore(engine), USER, PASSWORD)
                await engine.dispose()
                settings = Settings(
                    database_url=url,
                    listen=(ListenAddress(host="127.0.0.1", port=0),),
                    audit_spill_path=Path(directory) / "spill.jsonl",
                    max_unauthenticated_per_address=None,
                    max_unauthenticated=None,
                )
                async with app.running_server(settings) as server:
                    port = server.bound[0].port
                    await asyncio.sleep(0.5)
                    before, at = counts.snapshot(), time.monotonic()
                    answers = await flood(port, rate, seconds, pattern)
                    await asyncio.sleep(0.5)  # the last batch
                    after, took = counts.snapshot(), time.monotonic() - at
                    throttle, total, commits = (b - a for a, b in zip(before, after, strict=True))
                    print(
                        f"{store}, {pattern}: {int(rate * seconds)} wrong passwords at "
                        f"{rate}/s over {took:.1f} s: answers {answers}; throttle statements "
                        f"{throttle / took:.1f}/s, all statements {total / took:.1f}/s, "
                        f"commits {commits / took:.1f}/s"
                    )
                rates: dict[bool, list[float]] = {True: [], False: []}
                for enabled in (True, False, True, False):  # interleaved: a busy host's noise
                    warm_settings = Settings(
                        database_url=url,
                        listen=(ListenAddress(host="127.0.0.1", port=0),),
                        audit_spill_path=Path(directory) / "spill.jsonl",
                        login_throttle=enabled,
                    )
                    async with app.running_server(warm_settings) as server:
                        await warm_logins(server.bound[0].port, 0.5)  # the first: argon2
                        rates[enabled].append(await warm_logins(server.bound[0].port, 3.0))
                on, off = max(rates[True]), max(rates[False])
                print(
                    f"{store}: warm logins, 16 clients, best of 2: throttle on {on:.0f}/s, "
                    f"off {off:.0f}/s, on/off {on / off:.2f}"
                )
    finally:
        event.remove(Engine, "before_cursor_execute", counts.statement)
        event.remove(Engine, "commit", counts.commit)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument(
        "--pattern",
        choices=("spray", "pair"),
        default="spray",
        help="spray: 50 addresses x 500 usernames; pair: one address guessing one user",
    )
    options = parser.parse_args()
    if not (0 < options.seconds <= 60 and 0 < options.rate <= 1000):
        parser.error("--seconds must be in (0, 60] and --rate in (0, 1000]")
    stores = ("sqlite", "postgresql") if options.store == "both" else (options.store,)
    for store in stores:
        app.run(measure(store, options.rate, options.seconds, options.pattern))


if __name__ == "__main__":
    main()
