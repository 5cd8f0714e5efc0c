"""Load generators: a process that takes jobs over a pipe, runs them on uvloop, answers figures.

Every job is bounded in count and in time. Jobs:
  throughput  k tunnels upload to the sink or download from the source
  exchange    C clients loop over the full exchange (connect, login, CONNECT, 32-byte echo, close)
  idle_open / idle_check / idle_close   hold N tunnels open, then prove each still works
  probe_start / probe_stop   background probes (an established tunnel's echo RTT, warm logins)
  storm       many different users log in at once (cold logins), once each
  busy_echo   N tunnels opened at once from one address, each echoes a payload (busy host)
  flood_open / flood_close   N connections that never speak, held open (a silent flood)
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from typing import Any

from bench.socks5 import Route, open_connection, recv_exactly

CHUNK_BYTES = 1 << 20
PAYLOAD = bytes(range(32))
OP_TIMEOUT_SECONDS = 10.0


def _error_name(error: BaseException) -> str:
    return type(error).__name__ + (f"({error.errno})" if getattr(error, "errno", None) else "")


class _Upload(asyncio.Protocol):
    _data = bytes(CHUNK_BYTES)

    def __init__(self, cap: int, deadline: float) -> None:
        self.cap, self.deadline = cap, deadline
        self.sent = 0
        self.paused = False
        self.finished = False
        self.done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=4 * CHUNK_BYTES)

    def start(self) -> None:
        self._pump()

    def _pump(self) -> None:
        assert self.transport is not None
        while not self.paused and not self.finished:
            if self.sent >= self.cap or time.monotonic() >= self.deadline:
                self.finished = True
                self.transport.write_eof()  # the sink closes once it has read everything
                return
            self.transport.write(self._data)
            self.sent += CHUNK_BYTES

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        if not self.done.done():
            self.done.set_result(time.monotonic())
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if exc is None and self.finished:
                self.done.set_result(time.monotonic())
            else:
                self.done.set_exception(exc or ConnectionError("closed before the sink finished"))


class _Download(asyncio.BufferedProtocol):
    def __init__(self, cap: int, deadline: float) -> None:
        self.cap, self.deadline = cap, deadline
        self.received = 0
        self._view = memoryview(bytearray(CHUNK_BYTES))
        self.done: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.pause_reading()

    def start(self) -> None:
        assert self.transport is not None
        self.transport.write(b"g")  # the source starts streaming when asked
        self.transport.resume_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._view

    def buffer_updated(self, nbytes: int) -> None:
        self.received += nbytes
        if self.received >= self.cap or time.monotonic() >= self.deadline:
            if not self.done.done():
                self.done.set_result(time.monotonic())
            assert self.transport is not None
            self.transport.abort()

    def eof_received(self) -> bool:
        if not self.done.done():
            self.done.set_exception(ConnectionError("the source stopped early"))
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("closed early"))


class Worker:
    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.idle: list[Any] = []
        self.silent: list[socket.socket] = []
        self.probes: dict[str, Any] = {}

    async def throughput(
        self,
        route: Route,
        target: tuple[str, int],
        direction: str,
        tunnels: int,
        cap_bytes: int,
        seconds: float,
    ) -> dict[str, Any]:
        """``tunnels`` parallel transfers; bytes ÷ (last end - common start)."""
        socks = []
        try:
            for _ in range(tunnels):
                async with asyncio.timeout(OP_TIMEOUT_SECONDS):
                    socks.append(await open_connection(self.loop, route, target))
            start = time.monotonic()
            deadline = start + seconds
            protocols: list[_Upload | _Download] = []
            for sock in socks:
                protocol = (_Upload if direction == "up" else _Download)(cap_bytes, deadline)
                await self.loop.create_connection(lambda p=protocol: p, sock=sock)  # type: ignore[misc]
                protocols.append(protocol)
            socks = []  # the transports own them now
            start = time.monotonic()
            for protocol in protocols:
                protocol.start()
            async with asyncio.timeout(seconds + 30):
                ends = await asyncio.gather(*(p.done for p in protocols))
        finally:
            for sock in socks:
                sock.close()
        elapsed = max(ends) - start
        total = sum(p.sent if isinstance(p, _Upload) else p.received for p in protocols)
        return {"bytes": total, "seconds": elapsed, "mb_per_s": total / elapsed / 1e6}

    async def _exchange_once(self, route: Route, target: tuple[str, int]) -> float:
        started = time.perf_counter()
        async with asyncio.timeout(OP_TIMEOUT_SECONDS):
            sock = await open_connection(self.loop, route, target)
            try:
                await self.loop.sock_sendall(sock, PAYLOAD)
                if await recv_exactly(self.loop, sock, len(PAYLOAD)) != PAYLOAD:
                    raise ConnectionError("echo mismatch")
            finally:
                sock.close()
        return time.perf_counter() - started

    async def exchange(
        self, route: Route, target: tuple[str, int], clients: int, seconds: float, max_count: int
    ) -> dict[str, Any]:
        """``clients`` concurrent loops of the full exchange until ``seconds`` or ``max_count``."""
        latencies: list[float] = []
        errors: Counter[str] = Counter()
        started = [0]
        deadline = time.monotonic() + seconds

        async def client() -> None:
            while time.monotonic() < deadline and started[0] < max_count:
                started[0] += 1
                try:
                    latencies.append(await self._exchange_once(route, target))
                except (OSError, TimeoutError) as error:
                    errors[_error_name(error)] += 1

        start = time.monotonic()
        async with asyncio.timeout(seconds + OP_TIMEOUT_SECONDS + 5):
            await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.monotonic() - start
        return {
            "completed": len(latencies),
            "errors": dict(errors),
            "seconds": elapsed,
            "per_s": len(latencies) / elapsed,
            "latencies": latencies,
        }

    async def idle_open(
        self, route: Route, target: tuple[str, int], count: int, concurrency: int, seconds: float
    ) -> dict[str, Any]:
        """Open ``count`` tunnels (``concurrency`` at a time) and keep them; within ``seconds``."""
        errors: Counter[str] = Counter()
        semaphore = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with semaphore:
                try:
                    async with asyncio.timeout(OP_TIMEOUT_SECONDS):
                        self.idle.append(await open_connection(self.loop, route, target))
                except (OSError, TimeoutError) as error:
                    errors[_error_name(error)] += 1

        start = time.monotonic()
        async with asyncio.timeout(seconds):
            await asyncio.gather(*(one() for _ in range(count)))
        return {"open": len(self.idle), "errors": dict(errors), "seconds": time.monotonic() - start}

    async def busy_echo(
        self,
        route: Route,
        target: tuple[str, int],
        tunnels: int,
        payload_bytes: int,
        seconds: float,
    ) -> dict[str, Any]:
        """``tunnels`` tunnels started at once, each echoing ``payload_bytes`` then closing."""
        payload = bytes(range(256)) * (payload_bytes // 256)
        latencies: list[float] = []
        errors: Counter[str] = Counter()

        async def one() -> None:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(seconds):
                    sock = await open_connection(self.loop, route, target)
                    try:
                        await self.loop.sock_sendall(sock, payload)
                        if await recv_exactly(self.loop, sock, len(payload)) != payload:
                            raise ConnectionError("echo mismatch")
                    finally:
                        sock.close()
                latencies.append(time.perf_counter() - started)
            except (OSError, TimeoutError) as error:
                errors[_error_name(error)] += 1

        start = time.monotonic()
        await asyncio.gather(*(one() for _ in range(tunnels)))
        return {
            "completed": len(latencies),
            "errors": dict(errors),
            "seconds": time.monotonic() - start,
            "latencies": latencies,
        }

    async def flood_open(
        self, proxy: tuple[str, int], count: int, seconds: float
    ) -> dict[str, Any]:
        """``count`` TCP connections to the proxy that never send a byte, kept open."""
        errors: Counter[str] = Counter()

        async def one() -> None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await self.loop.sock_connect(sock, proxy)
                self.silent.append(sock)
            except OSError as error:
                sock.close()
                errors[_error_name(error)] += 1

        async with asyncio.timeout(seconds):
            await asyncio.gather(*(one() for _ in range(count)))
        return {"open": len(self.silent), "errors": dict(errors)}

    async def flood_close(self) -> dict[str, Any]:
        """How many of the silent connections the proxy had already closed, then close all."""
        closed_by_proxy = 0
        for sock in self.silent:
            try:
                if sock.recv(1) == b"":
                    closed_by_proxy += 1
            except BlockingIOError:
                pass
            except OSError:
                closed_by_proxy += 1
            sock.close()
        count, self.silent = len(self.silent), []
        return {"count": count, "closed_by_proxy": closed_by_proxy}

    async def idle_check(self, concurrency: int, seconds: float) -> dict[str, Any]:
        """One byte through each held tunnel and back (the target is the echo server)."""
        errors: Counter[str] = Counter()
        semaphore = asyncio.Semaphore(concurrency)

        async def one(sock: Any) -> None:
            async with semaphore:
                try:
                    async with asyncio.timeout(OP_TIMEOUT_SECONDS):
                        await self.loop.sock_sendall(sock, b"x")
                        await recv_exactly(self.loop, sock, 1)
                except (OSError, TimeoutError) as error:
                    errors[_error_name(error)] += 1

        async with asyncio.timeout(seconds):
            await asyncio.gather(*(one(sock) for sock in self.idle))
        return {"checked": len(self.idle), "errors": dict(errors)}

    async def idle_close(self) -> dict[str, Any]:
        for sock in self.idle:
            sock.close()
        closed, self.idle = len(self.idle), []
        await asyncio.sleep(0.2)
        return {"closed": closed}

    async def probe_start(
        self,
        route: Route,
        echo: tuple[str, int],
        interval_seconds: float,
        login_clients: int,
        max_seconds: float,
    ) -> dict[str, Any]:
        """Background: one established tunnel pings the echo every interval (RTT), and
        ``login_clients`` loops of full exchanges with an already-verified (warm) user."""
        stop = asyncio.Event()
        rtts: list[float] = []
        logins: list[float] = []
        errors: Counter[str] = Counter()
        deadline = time.monotonic() + max_seconds
        tunnel = await open_connection(self.loop, route, echo)

        async def ping() -> None:
            try:
                while not stop.is_set() and time.monotonic() < deadline:
                    started = time.perf_counter()
                    async with asyncio.timeout(OP_TIMEOUT_SECONDS):
                        await self.loop.sock_sendall(tunnel, PAYLOAD)
                        await recv_exactly(self.loop, tunnel, len(PAYLOAD))
                    rtts.append(time.perf_counter() - started)
                    await asyncio.sleep(interval_seconds)
            except (OSError, TimeoutError) as error:
                errors["tunnel " + _error_name(error)] += 1
            finally:
                tunnel.close()

        async def login() -> None:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    logins.append(await self._exchange_once(route, echo))
                except (OSError, TimeoutError) as error:
                    errors["login " + _error_name(error)] += 1
                await asyncio.sleep(interval_seconds)

        tasks = [asyncio.ensure_future(ping())]
        tasks += [asyncio.ensure_future(login()) for _ in range(login_clients)]
        self.probes = {
            "stop": stop,
            "tasks": tasks,
            "rtts": rtts,
            "logins": logins,
            "errors": errors,
        }
        return {}

    async def probe_stop(self) -> dict[str, Any]:
        self.probes["stop"].set()
        await asyncio.gather(*self.probes["tasks"])
        probes, self.probes = self.probes, {}
        return {
            "tunnel_rtts": probes["rtts"],
            "login_latencies": probes["logins"],
            "errors": dict(probes["errors"]),
        }

    async def storm(
        self, proxy: tuple[str, int], users: list[str], password: str, echo: tuple[str, int]
    ) -> dict[str, Any]:
        """Every user of ``users`` does one full exchange, all at once."""
        errors: Counter[str] = Counter()
        latencies: list[float] = []

        async def one(user: str) -> None:
            try:
                latencies.append(await self._exchange_once(Route(proxy, user, password), echo))
            except (OSError, TimeoutError) as error:
                errors[_error_name(error)] += 1

        start = time.monotonic()
        await asyncio.gather(*(one(user) for user in users))
        return {
            "completed": len(latencies),
            "errors": dict(errors),
            "seconds": time.monotonic() - start,
            "latencies": latencies,
        }


async def _serve(conn: Connection) -> None:
    worker = Worker()
    loop = asyncio.get_running_loop()
    while True:
        try:
            name, kwargs = await loop.run_in_executor(None, conn.recv)
        except EOFError:
            return
        if name == "exit":
            return
        job: Callable[..., Awaitable[dict[str, Any]]] = getattr(worker, name)
        try:
            result: Any = ("ok", await job(**kwargs))
        except Exception as error:  # reported to the parent, which decides
            result = ("error", f"{name}: {_error_name(error)}: {error}")
        conn.send(result)


def main(conn: Connection) -> None:
    """Process entry point."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve(conn))
    else:
        uvloop.run(_serve(conn))
