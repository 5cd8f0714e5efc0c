"""The proxy under test: a temporary database, `socksauth serve` as a subprocess, and what the
kernel says it costs (CPU time from /proc/PID/stat, PSS from /proc/PID/smaps_rollup)."""

from __future__ import annotations

import asyncio
import os
import re
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DEFAULT_PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


def socksauth_command() -> list[str]:
    """`socksauth` next to this Python (the venv), else on PATH, else `python -m socksauth`."""
    beside = Path(sys.executable).with_name("socksauth")
    if beside.exists():
        return [str(beside)]
    found = shutil.which("socksauth")
    return [found] if found else [sys.executable, "-m", "socksauth"]


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its live descendants (worker processes)."""
    pids, queue = [], [pid]
    while queue:
        current = queue.pop()
        pids.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as children:
                    queue.extend(int(child) for child in children.read().split())
        except OSError:
            continue
    return pids


def serving_processes(pid: int) -> int:
    """How many processes hold tunnels: the workers under a supervisor, else the one process."""
    return max(1, len(_process_tree(pid)) - 1)


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its live descendants, in seconds."""
    total = 0
    for each in _process_tree(pid):
        try:
            with open(f"/proc/{each}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)
    return total / CLOCK_TICKS


def pss_kib(pid: int) -> int:
    """Proportional set size of ``pid`` and its live descendants, KiB."""
    total = 0
    for each in _process_tree(pid):
        try:
            with open(f"/proc/{each}/smaps_rollup") as rollup:
                for line in rollup:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        except OSError:
            continue
    return total


def raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _pg_admin(admin_dsn: str, sql: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@dataclass
class Database:
    """A temporary store: an SQLite file in a temporary directory, or a fresh PostgreSQL
    database (CREATE DATABASE bench_<hex>, dropped in close())."""

    store: str
    workdir: Path
    pg_admin: str = DEFAULT_PG_ADMIN
    url: str = ""
    _pg_name: str = ""

    def create(self) -> None:
        if self.store == "sqlite":
            self.url = f"sqlite+aiosqlite:///{self.workdir / 'bench.sqlite3'}"
        else:
            self._pg_name = f"bench_{secrets.token_hex(6)}"
            asyncio.run(_pg_admin(self.pg_admin, f"CREATE DATABASE {self._pg_name}"))
            base = self.pg_admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://")
            self.url = f"{base}/{self._pg_name}"
        self._cli("db", "upgrade")
        self.allow_loopback_targets()

    def allow_loopback_targets(self) -> None:
        """The peers listen on 127.0.0.1, which the destination policy protects: one allow
        rule inside the protected range unlocks it (when this socksauth has rules at all)."""
        try:
            from socksauth.store.database import create_engine
            from socksauth.store.interfaces import NewRule
            from socksauth.store.rules import SqlRuleStore
        except ImportError:
            return

        async def add() -> None:
            engine = create_engine(self.url)
            try:
                await SqlRuleStore(engine).add_rule(NewRule(action="allow", cidr="127.0.0.1/32"))
            finally:
                await engine.dispose()

        asyncio.run(add())

    def _cli(self, *args: str, stdin: str | None = None) -> None:
        subprocess.run(
            [*socksauth_command(), *args, "--database-url", self.url],
            input=stdin,
            text=True,
            check=True,
            capture_output=True,
            timeout=120,
        )

    def add_user(self, name: str, password: str) -> None:
        """Through the CLI, as an operator would."""
        self._cli("user", "add", name, "--password-stdin", stdin=password + "\n")

    def add_users_fast(self, names: list[str], password: str) -> None:
        """Many users at once, in-process: one argon2 hash shared by all (each login still
        verifies it in full: the server's cache is per user)."""
        from socksauth import app
        from socksauth.auth import passwords

        async def add() -> None:
            password_hash = passwords.hash_password(password)
            async with app.open_user_store(self.url) as store:
                for name in names:
                    await store.add_user(name, password_hash)

        asyncio.run(add())

    def close(self) -> None:
        if self._pg_name:
            asyncio.run(
                _pg_admin(self.pg_admin, f"DROP DATABASE IF EXISTS {self._pg_name} WITH (FORCE)")
            )
            self._pg_name = ""


@dataclass
class Server:
    """`socksauth serve` on 127.0.0.1:0 with RLIMIT_NOFILE at its hard limit."""

    database: Database
    name: str
    extra_args: list[str] = field(default_factory=list)
    process: subprocess.Popen[bytes] | None = None
    address: tuple[str, int] = ("127.0.0.1", 0)
    log_path: Path | None = None

    def start(self, timeout_seconds: float = 60.0) -> None:
        self.log_path = self.database.workdir / f"serve-{self.name}-{secrets.token_hex(3)}.log"
        env = dict(os.environ, XDG_STATE_HOME=str(self.database.workdir))
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    *socksauth_command(),
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--database-url",
                    self.database.url,
                    *self.extra_args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                preexec_fn=raise_nofile,
            )
        deadline = time.monotonic() + timeout_seconds
        pattern = re.compile(rb"listening on 127\.0\.0\.1:(\d+)")
        while time.monotonic() < deadline:
            found = pattern.search(self.log_path.read_bytes())
            if found:
                self.address = ("127.0.0.1", int(found.group(1)))
                return
            if self.process.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"socksauth serve ({self.name}) did not start:\n{tail}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)


def serve_supports(option: str) -> bool:
    """Whether `socksauth serve --help` lists ``option`` (e.g. --workers)."""
    result = subprocess.run(
        [*socksauth_command(), "serve", "--help"], capture_output=True, text=True, timeout=60
    )
    return option in result.stdout


def make_workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="socksauth-bench-"))
