"""HTTP proxy clients versus SOCKS5 versus direct, in the same run: exchange rate, one-tunnel
throughput, forwarded requests over keep-alive, and what the first-byte detection costs SOCKS5.

    python -m bench.bench_http [--seconds 3] [--concurrency 16] [--rounds 3]

Processes, all on 127.0.0.1: the peers (an echo server, a sink and a keep-alive HTTP origin),
two proxies (`app.running_server` on one temporary SQLite database with one user, uvloop when
installed: one with the HTTP proxy on, the default, one with `--no-http`), and this client.
Per round, every path is measured in turn (the order rotates):

- exchange: connect → handshake (SOCKS5: greeting, RFC 1929 login, CONNECT; HTTP: CONNECT
  with Proxy-Authorization: Basic) → 32-byte echo → close, ``--concurrency`` clients for
  ``--seconds``; connections per second;
- throughput: one tunnel uploads to the sink for ``--seconds`` (at most 2 GiB), timed until
  the sink's FIN comes back; MB/s;
- forwarded: absolute-form GETs (HTTP) or origin-form GETs (direct) over one keep-alive
  connection, one at a time, for ``--seconds``; requests per second.

Ratios are taken per round, then the median over the rounds is printed. The login is cached
after the first verification (as for any returning user), so the exchange measures the proxy,
not argon2.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import socket
import statistics
import struct
import tempfile
import time
from collections.abc import Awaitable, Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import cast

USER, PASSWORD = "bench", "bench-Http-Password-73"
PAYLOAD = b"x" * 32
CHUNK = 256 * 1024
MAX_UPLOAD_BYTES = 2 * 1024**3
ORIGIN_BODY = b"o" * 512


# --- the peers --------------------------------------------------------------------------------


class _Sink(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        self.transport.close()
        return False


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class _Origin(asyncio.Protocol):
    """Answers each request head with a 512-byte body, keep-alive (no request bodies)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\r\n\r\n" in self.buffer:
            _, _, self.buffer = self.buffer.partition(b"\r\n\r\n")
            self.transport.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(ORIGIN_BODY) + ORIGIN_BODY
            )


def _peers_process(conn: Connection) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        servers = [
            await loop.create_server(factory, "127.0.0.1", 0, backlog=4096)
            for factory in (_Echo, _Sink, _Origin)
        ]
        conn.send([server.sockets[0].getsockname()[1] for server in servers])
        stop = asyncio.Event()
        loop.add_reader(conn.fileno(), stop.set)
        await stop.wait()

    _run(main())


def _run(main: Awaitable[None]) -> None:
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)  # type: ignore[arg-type]
    else:
        uvloop.run(main)  # type: ignore[arg-type]


def _proxy_process(conn: Connection, directory: str, http_enabled: bool) -> None:
    from socksauth import app
    from socksauth.auth import accounts
    from socksauth.config import ListenAddress, Settings
    from socksauth.store.database import create_engine
    from socksauth.store.interfaces import NewRule
    from socksauth.store.rules import SqlRuleStore

    url = f"sqlite+aiosqlite:///{Path(directory) / 'bench.sqlite3'}"

    async def main() -> None:
        if http_enabled:  # the first proxy prepares the database; the second reuses it
            await app.upgrade_database(url)
            async with app.open_user_store(url) as store:
                await accounts.add_user(store, USER, PASSWORD)
            # The destination policy protects loopback by default; the peers live there.
            engine = create_engine(url)
            try:
                await SqlRuleStore(engine).add_rule(NewRule(action="allow", cidr="127.0.0.0/8"))
            finally:
                await engine.dispose()
        settings = Settings(
            database_url=url,
            listen=(ListenAddress(host="127.0.0.1", port=0),),
            http_enabled=http_enabled,
            node_name=f"bench-http-{http_enabled}",
        )
        async with app.running_server(settings) as server:
            conn.send(server.bound[0].port)
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            loop.add_reader(conn.fileno(), stop.set)
            await stop.wait()

    app.run(main())


# --- handshakes -------------------------------------------------------------------------------

_TOKEN = base64.b64encode(f"{USER}:{PASSWORD}".encode())
_SOCKS_LOGIN = (
    b"\x05\x01\x02"
    + bytes((1, len(USER)))
    + USER.encode()
    + bytes((len(PASSWORD),))
    + PASSWORD.encode()
)


def _socks_request(port: int) -> bytes:
    return b"\x05\x01\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", port)


def _http_connect(port: int) -> bytes:
    return (
        b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
        b"Proxy-Authorization: Basic %s\r\n\r\n" % (port, port, _TOKEN)
    )


Opener = Callable[[int], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]


def direct_opener() -> Opener:
    async def open_(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", port)

    return open_


def socks_opener(proxy_port: int) -> Opener:
    async def open_(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        # Each step waits for its reply, as the SOCKS5 clients in the wild do.
        writer.write(_SOCKS_LOGIN[:3])
        assert await reader.readexactly(2) == b"\x05\x02"
        writer.write(_SOCKS_LOGIN[3:])
        assert await reader.readexactly(2) == b"\x01\x00"
        writer.write(_socks_request(port))
        reply = await reader.readexactly(10)
        assert reply[1] == 0, reply
        return reader, writer

    return open_


def http_opener(proxy_port: int) -> Opener:
    async def open_(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        writer.write(_http_connect(port))
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        return reader, writer

    return open_


# --- the measurements -------------------------------------------------------------------------


async def exchange_rate(open_: Opener, echo_port: int, seconds: float, concurrency: int) -> float:
    """Full exchanges per second: connect, handshake, 32-byte echo, close."""
    deadline = time.monotonic() + seconds
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.monotonic() < deadline:
            reader, writer = await open_(echo_port)
            writer.write(PAYLOAD)
            await reader.readexactly(len(PAYLOAD))
            writer.close()
            await writer.wait_closed()
            done += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.monotonic() - started)


async def throughput(open_: Opener, sink_port: int, seconds: float) -> float:
    """MB/s of one tunnel uploading to the sink, until its FIN comes back."""
    reader, writer = await open_(sink_port)
    chunk = b"\0" * CHUNK
    sent = 0
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline and sent < MAX_UPLOAD_BYTES:
        writer.write(chunk)
        await writer.drain()
        sent += CHUNK
    writer.write_eof()
    assert await reader.read() == b""
    elapsed = time.monotonic() - started
    writer.close()
    return sent / elapsed / 1e6


async def forwarded_rate(proxy_port: int | None, origin_port: int, seconds: float) -> float:
    """GETs per second over one keep-alive connection: absolute form through the proxy, or
    origin form straight to the origin."""
    port = origin_port if proxy_port is None else proxy_port
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    if proxy_port is None:
        request = b"GET /bench HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    else:
        request = (
            b"GET http://127.0.0.1:%d/bench HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Proxy-Authorization: Basic %s\r\n\r\n" % (origin_port, _TOKEN)
        )
    done = 0
    started = time.monotonic()
    deadline = started + seconds
    while time.monotonic() < deadline and done < 1_000_000:
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        await reader.readexactly(len(ORIGIN_BODY))
        done += 1
    elapsed = time.monotonic() - started
    writer.close()
    return done / elapsed


async def one_round(
    ports: dict[str, int], args: argparse.Namespace, rotation: int
) -> dict[str, dict[str, float]]:
    echo, sink, origin = ports["echo"], ports["sink"], ports["origin"]
    paths: dict[str, Opener] = {
        "direct": direct_opener(),
        "socks5": socks_opener(ports["proxy"]),
        "http": http_opener(ports["proxy"]),
        "socks5 --no-http": socks_opener(ports["proxy_no_http"]),
    }
    names = list(paths)
    names = names[rotation % len(names) :] + names[: rotation % len(names)]
    result: dict[str, dict[str, float]] = {name: {} for name in paths}
    for name in names:
        result[name]["exchange"] = await exchange_rate(
            paths[name], echo, args.seconds, args.concurrency
        )
    for name in names:
        result[name]["throughput"] = await throughput(paths[name], sink, args.seconds)
    result["direct"]["forwarded"] = await forwarded_rate(None, origin, args.seconds)
    result["http"]["forwarded"] = await forwarded_rate(ports["proxy"], origin, args.seconds)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")
    peers_conn, peers_child = context.Pipe()
    proxy_conn, proxy_child = context.Pipe()
    plain_conn, plain_child = context.Pipe()
    with tempfile.TemporaryDirectory(prefix="socksauth-bench-http-") as directory:
        peers = context.Process(target=_peers_process, args=(peers_child,), daemon=True)
        proxy = context.Process(
            target=_proxy_process, args=(proxy_child, directory, True), daemon=True
        )
        peers.start()
        proxy.start()
        plain = None
        try:
            if not peers_conn.poll(30) or not proxy_conn.poll(60):
                raise SystemExit("the peers or the proxy did not start")
            echo, sink, origin = peers_conn.recv()
            ports = {"echo": echo, "sink": sink, "origin": origin, "proxy": proxy_conn.recv()}
            plain = context.Process(
                target=_proxy_process, args=(plain_child, directory, False), daemon=True
            )
            plain.start()
            if not plain_conn.poll(60):
                raise SystemExit("the --no-http proxy did not start")
            ports["proxy_no_http"] = plain_conn.recv()

            async def run_all() -> list[dict[str, dict[str, float]]]:
                # Warm-up: each proxy verifies the password once, then its cache answers.
                for name in ("proxy", "proxy_no_http"):
                    await exchange_rate(socks_opener(ports[name]), echo, 0.3, 2)
                await exchange_rate(http_opener(ports["proxy"]), echo, 0.3, 2)
                return [await one_round(ports, args, r) for r in range(args.rounds)]

            rounds = asyncio.run(run_all())
        finally:
            for child_conn in (peers_conn, proxy_conn, plain_conn):
                child_conn.send("stop")
            for process in (peers, proxy, plain):
                if process is not None:
                    process.join(10)
    report(rounds, args)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def report(rounds: list[dict[str, dict[str, float]]], args: argparse.Namespace) -> None:
    print(
        f"127.0.0.1, {args.rounds} rounds of {args.seconds:g} s per measurement; exchange at "
        f"{args.concurrency} clients; medians (ratios taken per round)"
    )
    print(f"{'':18}{'exchange conn/s':>16}{'1 tunnel MB/s':>15}{'forwarded GET/s':>17}")
    for name in rounds[0]:
        exchange = _median([r[name]["exchange"] for r in rounds])
        mbps = _median([r[name]["throughput"] for r in rounds])
        forwarded = (
            f"{_median([r[name]['forwarded'] for r in rounds]):>17,.0f}"
            if "forwarded" in rounds[0][name]
            else f"{'-':>17}"
        )
        print(f"{name:18}{exchange:>16,.0f}{mbps:>15,.0f}{forwarded}")

    def ratio(metric: str, a: str, b: str) -> str:
        values = [r[a][metric] / r[b][metric] for r in rounds]
        return f"{_median(values):.2f} [{min(values):.2f}-{max(values):.2f}]"

    print("ratios, median [min-max]:")
    print(f"  http CONNECT / direct   exchange {ratio('exchange', 'http', 'direct')}"
          f"   throughput {ratio('throughput', 'http', 'direct')}")  # fmt: skip
    print(f"  http CONNECT / socks5   exchange {ratio('exchange', 'http', 'socks5')}"
          f"   throughput {ratio('throughput', 'http', 'socks5')}")  # fmt: skip
    print(f"  socks5 / socks5 --no-http (the detection's cost)   exchange "
          f"{ratio('exchange', 'socks5', 'socks5 --no-http')}   throughput "
          f"{ratio('throughput', 'socks5', 'socks5 --no-http')}")  # fmt: skip
    print(f"  forwarded GET / direct GET (keep-alive, one at a time) "
          f"{ratio('forwarded', 'http', 'direct')}")  # fmt: skip


if __name__ == "__main__":
    main()
