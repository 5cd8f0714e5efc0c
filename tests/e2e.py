"""End-to-end pieces: loopback targets (echo, HTTP), a running proxy with users, a raw client.

Everything listens on 127.0.0.1 (or ::1) port 0 and talks to loopback only. Shared by the
test modules: tests/conftest.py registers this module as a plugin, so its fixtures need no import.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ipaddress
import os
import re
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth import app
from socksauth.auth import accounts
from socksauth.config import ListenAddress, Settings
from socksauth.server.listener import ProxyServer
from socksauth.store.changes import SqlChangeFeed
from socksauth.store.database import create_engine
from socksauth.store.interfaces import NewRule
from socksauth.store.rules import SqlRuleStore
from socksauth.store.users import SqlUserStore

ALICE, ALICE_PASSWORD = "alice", "alice-Secret-8d1f"
BOB, BOB_PASSWORD = "bob", "bob-Secret-51c7"

HTTP_BODY = b"hello from the loopback target\n"

# Every wait in these tests is bounded by this, far below pytest's 60 s timeout.
WAIT_SECONDS = 10.0


# --- polling with a bound, for conditions no event announces --------------------------------


async def eventually(
    condition: Callable[[], bool], timeout: float = WAIT_SECONDS, what: str = "condition"
) -> None:
    """Return once ``condition()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        await asyncio.sleep(0.01)


# --- targets ----------------------------------------------------------------------------------


@dataclass
class EchoServer:
    """Echoes every byte back; on the client's FIN it finishes echoing, then closes.

    ``peers`` lists the address of each connection as the echo server saw it (the proxy's
    outbound socket). ``read_delay_seconds`` makes it a slow reader (flow control tests);
    ``reading`` can be cleared to stop reading altogether.
    """

    host: str
    port: int = 0
    peers: list[tuple[str, int]] = field(default_factory=list)
    read_delay_seconds: float = 0.0
    read_bytes: int = 64 * 1024
    reading: asyncio.Event = field(default_factory=asyncio.Event)
    accepted: asyncio.Event = field(default_factory=asyncio.Event)
    # Set when a connection ended: the proxy's side closed (FIN or reset) and we closed ours.
    ended: asyncio.Event = field(default_factory=asyncio.Event)
    sockets: list[socket.socket] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        self.peers.append((peer[0], peer[1]))
        self.sockets.append(writer.get_extra_info("socket"))
        self.accepted.set()
        try:
            while True:
                await self.reading.wait()
                data = await reader.read(self.read_bytes)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
                if self.read_delay_seconds:
                    await asyncio.sleep(self.read_delay_seconds)
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            self.ended.set()


@contextlib.asynccontextmanager
async def running_echo_server(host: str = "127.0.0.1") -> AsyncIterator[EchoServer]:
    echo = EchoServer(host)
    echo.reading.set()
    server = await asyncio.start_server(echo.handle, host, 0)
    echo.port = server.sockets[0].getsockname()[1]
    async with server:
        yield echo
        server.close()
        # Connections the proxy left open must not outlive the test.
        for sock in echo.sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@dataclass
class HttpServer:
    host: str
    port: int
    requests: list[bytes] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            self.requests.append(head)
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n"
                + f"Content-Length: {len(HTTP_BODY)}\r\n\r\n".encode()
                + HTTP_BODY
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def running_http_server() -> AsyncIterator[HttpServer]:
    """A minimal HTTP/1.1 server answering every request with ``HTTP_BODY``."""
    http = HttpServer("127.0.0.1", 0)
    server = await asyncio.start_server(http.handle, "127.0.0.1", 0)
    http.port = server.sockets[0].getsockname()[1]
    async with server:
        yield http


def closed_port() -> socket.socket:
    """A bound, not listening socket: connecting to its port is refused, and the port stays
    ours until the socket is closed, so nothing else starts listening there meanwhile."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock


def ipv6_loopback_available() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


# --- the proxy --------------------------------------------------------------------------------


@dataclass
class RunningProxy:
    server: ProxyServer
    settings: Settings
    store: SqlUserStore
    changes: SqlChangeFeed

    async def caught_up(self, timeout: float = 2.0) -> float:
        """Wait until the server has seen every account and rule change committed so far
        (PostgreSQL NOTIFY, or its poll of the change counter); the seconds it took."""
        started = time.monotonic()
        wanted = await self.changes.revision()
        access = self.server.access
        assert access is not None
        await eventually(
            lambda: (access.revision or 0) >= wanted, timeout, "the change reaching the proxy"
        )
        return time.monotonic() - started

    @property
    def port(self) -> int:
        return self.server.bound[0].port

    def url(self, scheme: str = "socks5", user: str = ALICE, password: str = ALICE_PASSWORD) -> str:
        return f"{scheme}://{user}:{password}@127.0.0.1:{self.port}"


ProxyFactory = Callable[..., contextlib.AbstractAsyncContextManager[RunningProxy]]


async def add_test_users(engine: AsyncEngine) -> SqlUserStore:
    store = SqlUserStore(engine)
    await accounts.add_user(store, ALICE, ALICE_PASSWORD)
    await accounts.add_user(store, BOB, BOB_PASSWORD)
    return store


# The targets of these tests listen on loopback, which the destination policy protects by
# default (server/policy.py): the proxy under test gets rules that unlock it.
LOOPBACK_RULES = (
    NewRule(action="allow", cidr="127.0.0.0/8"),
    NewRule(action="allow", cidr="::1/128"),
)


async def allow_loopback_targets(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        rules = SqlRuleStore(engine)
        present = {(rule.action, rule.cidr) for rule in await rules.list_rules()}
        for rule in LOOPBACK_RULES:
            if (rule.action, rule.cidr) not in present:
                await rules.add_rule(rule, position=1)
    finally:
        await engine.dispose()


def proxy_factory_for(database_url: str, store: SqlUserStore) -> ProxyFactory:
    @contextlib.asynccontextmanager
    async def start(
        *, allow_loopback: bool = True, **overrides: Any
    ) -> AsyncIterator[RunningProxy]:
        """``allow_loopback``: add rules that let clients reach loopback targets (the
        targets of these tests); False keeps the safe default, which denies them."""
        if allow_loopback:
            await allow_loopback_targets(database_url)
        settings = Settings(
            database_url=database_url,
            listen=(ListenAddress(host="127.0.0.1", port=0),),
            **overrides,
        )
        engine = create_engine(database_url)
        try:
            async with app.running_server(settings) as server:
                yield RunningProxy(server, settings, store, SqlChangeFeed(engine))
        finally:
            await engine.dispose()

    return start


# --- `socksauth serve --workers 2` as a process ------------------------------------------


def worker_pids(supervisor: int) -> set[int]:
    """The pids of a supervisor's child processes (its workers), from /proc."""
    try:
        with open(f"/proc/{supervisor}/task/{supervisor}/children") as children:
            return {int(pid) for pid in children.read().split()}
    except FileNotFoundError:
        return set()


@dataclass
class Supervisor:
    process: asyncio.subprocess.Process
    port: int
    # The admin listener's base URL, when started with --admin-listen.
    admin: str = ""

    def worker_pids(self) -> set[int]:
        return worker_pids(self.process.pid)


async def serve_with_two_workers(database_url: str, *options: str) -> asyncio.subprocess.Process:
    """`socksauth serve --workers 2` on a free loopback port, its log on a pipe."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "socksauth", "serve", "--workers", "2",
        "--listen", "127.0.0.1:0", "--database-url", database_url, *options,
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


@contextlib.asynccontextmanager
async def running_two_workers(database_url: str, *options: str) -> AsyncIterator[Supervisor]:
    """A two-worker server (with ``options``) once it listens; killed, workers too, after."""
    await allow_loopback_targets(database_url)  # the echo target listens on loopback
    process = await serve_with_two_workers(database_url, *options)
    assert process.stderr is not None
    wants_admin = "--admin-listen" in options
    port, admin = 0, ""
    async with asyncio.timeout(30):
        while not (port and (admin or not wants_admin)):
            line = (await process.stderr.readline()).decode()
            assert line, "the server exited before it listened"
            if match := re.search(r"listening on 127\.0\.0\.1:(\d+) \(2 workers\)", line):
                port = int(match.group(1))
            if match := re.search(r"admin listener .* on (http://127\.0\.0\.1:\d+)", line):
                admin = match.group(1)
    drain = asyncio.create_task(process.stderr.read())
    running = Supervisor(process, port, admin)
    try:
        yield running
    finally:
        # Read before the supervisor dies: its children are listed under its own /proc entry.
        workers = running.worker_pids()
        if process.returncode is None:
            process.kill()
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        # The workers hold the log pipe too: wait once they are gone as well.
        await process.wait()
        drain.cancel()


# --- fixtures (every test's, through pytest_plugins in tests/conftest.py) ---------------------


@pytest.fixture
async def echo_server() -> AsyncIterator[EchoServer]:
    async with running_echo_server() as echo:
        yield echo


@pytest.fixture
async def http_server() -> AsyncIterator[HttpServer]:
    async with running_http_server() as http:
        yield http


@pytest.fixture
async def user_store(engine: AsyncEngine) -> SqlUserStore:
    """The migrated database with alice and bob (passwords ALICE_PASSWORD, BOB_PASSWORD)."""
    return await add_test_users(engine)


@pytest.fixture
def start_proxy(database_url: str, user_store: SqlUserStore) -> ProxyFactory:
    """``async with start_proxy(**settings) as proxy``: a server with non-default settings."""
    return proxy_factory_for(database_url, user_store)


@pytest.fixture
async def proxy(start_proxy: ProxyFactory) -> AsyncIterator[RunningProxy]:
    """The proxy with default settings, on 127.0.0.1 and a free port."""
    async with start_proxy() as running:
        yield running


# --- a raw SOCKS5 client ------------------------------------------------------------------------

NO_AUTH, GSSAPI, USERNAME_PASSWORD = 0x00, 0x01, 0x02
CONNECT, BIND, UDP_ASSOCIATE = 0x01, 0x02, 0x03
ATYP_IPV4, ATYP_DOMAIN, ATYP_IPV6 = 0x01, 0x03, 0x04


def greeting(*methods: int) -> bytes:
    """RFC 1928 §3: VER | NMETHODS | METHODS."""
    return bytes((5, len(methods), *methods))


def credentials(username: str, password: str) -> bytes:
    """RFC 1929 §2: VER=1 | ULEN | UNAME | PLEN | PASSWD."""
    name, secret = username.encode(), password.encode()
    return bytes((1, len(name))) + name + bytes((len(secret),)) + secret


def encode_address(host: str, port: int) -> bytes:
    """ATYP | DST.ADDR | DST.PORT for an IP literal or a domain name."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode()
        return bytes((ATYP_DOMAIN, len(name))) + name + struct.pack("!H", port)
    atyp = ATYP_IPV4 if ip.version == 4 else ATYP_IPV6
    return bytes((atyp,)) + ip.packed + struct.pack("!H", port)


def request(host: str, port: int, command: int = CONNECT) -> bytes:
    """RFC 1928 §4: VER | CMD | RSV | ATYP | DST.ADDR | DST.PORT."""
    return bytes((5, command, 0)) + encode_address(host, port)


@dataclass(frozen=True)
class CommandReply:
    reply: int
    host: str
    port: int


async def read_reply(reader: asyncio.StreamReader) -> CommandReply:
    """RFC 1928 §6: VER | REP | RSV | ATYP | BND.ADDR | BND.PORT."""
    async with asyncio.timeout(WAIT_SECONDS):
        ver, rep, rsv, atyp = await reader.readexactly(4)
        assert (ver, rsv) == (5, 0), f"reply starts {ver:#x} {rsv:#x}"
        if atyp == ATYP_IPV4:
            host = str(ipaddress.IPv4Address(await reader.readexactly(4)))
        elif atyp == ATYP_IPV6:
            host = str(ipaddress.IPv6Address(await reader.readexactly(16)))
        else:
            assert atyp == ATYP_DOMAIN, f"reply ATYP {atyp:#x}"
            length = (await reader.readexactly(1))[0]
            host = (await reader.readexactly(length)).decode()
        (port,) = struct.unpack("!H", await reader.readexactly(2))
    return CommandReply(rep, host, port)


async def read_until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything until the server's FIN; fails on a reset or if no FIN comes in time."""
    async with asyncio.timeout(WAIT_SECONDS):
        return await reader.read()


async def read_exactly(reader: asyncio.StreamReader, n: int) -> bytes:
    async with asyncio.timeout(WAIT_SECONDS):
        return await reader.readexactly(n)


@contextlib.asynccontextmanager
async def raw_connection(
    port: int, host: str = "127.0.0.1"
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    async with asyncio.timeout(WAIT_SECONDS):
        reader, writer = await asyncio.open_connection(host, port)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def login(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    username: str = ALICE,
    password: str = ALICE_PASSWORD,
) -> None:
    """Greeting offering username/password, then the credentials; asserts success."""
    writer.write(greeting(USERNAME_PASSWORD))
    assert await read_exactly(reader, 2) == b"\x05\x02"
    writer.write(credentials(username, password))
    assert await read_exactly(reader, 2) == b"\x01\x00"


async def reply_to(
    port: int,
    host: str,
    target_port: int,
    command: int = CONNECT,
    user: str = ALICE,
    password: str = ALICE_PASSWORD,
) -> int:
    """The REP of the proxy's reply to one request; the connection is closed after it."""
    async with raw_connection(port) as (reader, writer):
        await login(reader, writer, user, password)
        writer.write(request(host, target_port, command))
        return (await read_reply(reader)).reply


async def open_tunnel(
    port: int, target_host: str, target_port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, CommandReply]:
    """Log in as alice and CONNECT; the caller owns (and closes) the returned writer."""
    async with asyncio.timeout(WAIT_SECONDS):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await login(reader, writer)
    writer.write(request(target_host, target_port))
    reply = await read_reply(reader)
    return reader, writer, reply


async def assert_serves_a_good_client(proxy_port: int, echo: EchoServer) -> None:
    """A full exchange: login, CONNECT to the echo server, a round trip, a clean end."""
    reader, writer, reply = await open_tunnel(proxy_port, echo.host, echo.port)
    try:
        assert reply.reply == 0x00
        writer.write(b"still serving?")
        assert await read_exactly(reader, 14) == b"still serving?"
        writer.write_eof()
        assert await read_until_closed(reader) == b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def with_timeout(awaitable: Awaitable[Any], seconds: float = WAIT_SECONDS) -> Any:
    async with asyncio.timeout(seconds):
        return await awaitable


# --- HTTP proxy clients (the same port, the first byte decides) ---------------------------------


def http_connect(
    host: str, port: int, user: str | None = ALICE, password: str = ALICE_PASSWORD
) -> bytes:
    """An RFC 9110 §9.3.6 CONNECT head, with Proxy-Authorization: Basic unless ``user`` is None."""
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if user is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        head += f"Proxy-Authorization: Basic {token}\r\n"
    return (head + "\r\n").encode()


async def read_http_head(reader: asyncio.StreamReader) -> bytes:
    """A response head up to and including its blank line."""
    async with asyncio.timeout(WAIT_SECONDS):
        return await reader.readuntil(b"\r\n\r\n")


@dataclass
class TlsFiles:
    cert: str
    key: str


def make_loopback_certificate(directory: str) -> TlsFiles:
    """A self-signed certificate for 127.0.0.1 and localhost (openssl, no network)."""
    cert, key = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
         "-keyout", key, "-out", cert],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    return TlsFiles(cert, key)


@contextlib.asynccontextmanager
async def running_https_server(tls: TlsFiles) -> AsyncIterator[HttpServer]:
    """``running_http_server`` over TLS with the loopback certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert, tls.key)
    https = HttpServer("127.0.0.1", 0)
    server = await asyncio.start_server(https.handle, "127.0.0.1", 0, ssl=context)
    https.port = server.sockets[0].getsockname()[1]
    async with server:
        yield https
