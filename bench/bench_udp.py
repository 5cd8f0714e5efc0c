"""UDP through the proxy versus direct, in the same run: datagram rate and round-trip latency.

    python -m bench.bench_udp [--datagrams 20000] [--payload-bytes 64] [--window 32]

Three processes, all on 127.0.0.1: a UDP echo server, the proxy (`app.running_server` on a
temporary SQLite database with one user, uvloop when installed) and this client. The client
associates once over a real SOCKS5 handshake, then measures on blocking sockets:

- latency: one datagram at a time, echo awaited (p50, p99, max of the round trip);
- rate: ``--window`` datagrams in flight, a new one sent per echo received; echoed datagrams
  per second over the whole run (a datagram whose echo does not come within 0.5 s counts as
  lost and is replaced).

Every phase is bounded by a count and by ``--time-cap-seconds``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import socket
import statistics
import struct
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

USER, PASSWORD = "bench", "bench-Udp-Password-41"
LOSS_TIMEOUT_SECONDS = 0.5


# --- the peers -------------------------------------------------------------------------------


def _echo_process(conn: Connection) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.5)
    conn.send(sock.getsockname()[1])
    while not conn.poll():
        try:
            data, addr = sock.recvfrom(65535)
        except TimeoutError:
            continue
        sock.sendto(data, addr)
    sock.close()


def _proxy_process(conn: Connection, directory: str) -> None:
    from socksauth import app
    from socksauth.auth import accounts
    from socksauth.config import ListenAddress, Settings
    from socksauth.store.database import create_engine
    from socksauth.store.interfaces import NewRule
    from socksauth.store.rules import SqlRuleStore

    url = f"sqlite+aiosqlite:///{Path(directory) / 'bench.sqlite3'}"

    async def main() -> None:
        await app.upgrade_database(url)
        async with app.open_user_store(url) as store:
            await accounts.add_user(store, USER, PASSWORD)
        # The destination policy protects loopback by default; the echo server lives there.
        engine = create_engine(url)
        try:
            await SqlRuleStore(engine).add_rule(NewRule(action="allow", cidr="127.0.0.0/8"))
        finally:
            await engine.dispose()
        settings = Settings(database_url=url, listen=(ListenAddress(host="127.0.0.1", port=0),))
        async with app.running_server(settings) as server:
            conn.send(server.bound[0].port)
            loop = asyncio.get_running_loop()
            stop = asyncio.Event()
            loop.add_reader(conn.fileno(), stop.set)
            await stop.wait()

    app.run(main())


# --- the SOCKS5 handshake (blocking) ----------------------------------------------------------


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise ConnectionError("proxy closed the connection")
        data += chunk
    return data


def associate(proxy_port: int, client_port: int) -> tuple[socket.socket, tuple[str, int]]:
    """UDP ASSOCIATE as the bench user; returns the control connection and the relay address."""
    control = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    control.sendall(b"\x05\x01\x02")
    assert _recv_exactly(control, 2) == b"\x05\x02"
    name, secret = USER.encode(), PASSWORD.encode()
    control.sendall(bytes((1, len(name))) + name + bytes((len(secret),)) + secret)
    assert _recv_exactly(control, 2) == b"\x01\x00"
    control.sendall(b"\x05\x03\x00\x01\x00\x00\x00\x00" + struct.pack("!H", client_port))
    head = _recv_exactly(control, 4)
    assert head[:2] == b"\x05\x00" and head[3] == 1, head
    host = socket.inet_ntoa(_recv_exactly(control, 4))
    (port,) = struct.unpack("!H", _recv_exactly(control, 2))
    return control, (host, port)


# --- the measurements -------------------------------------------------------------------------


def measure_latency(
    send: Callable[[bytes], None], recv: Callable[[], bytes], count: int, cap_seconds: float
) -> list[float]:
    payload = bytes(range(256))
    rtts: list[float] = []
    deadline = time.monotonic() + cap_seconds
    for sequence in range(count):
        if time.monotonic() > deadline:
            break
        message = struct.pack("!I", sequence) + payload
        start = time.perf_counter()
        send(message)
        try:
            while recv()[:4] != message[:4]:
                pass  # a late echo of an earlier datagram
        except TimeoutError:
            continue  # lost: not a latency sample
        rtts.append(time.perf_counter() - start)
    return rtts


def measure_rate(
    send: Callable[[bytes], None],
    recv: Callable[[], bytes],
    count: int,
    window: int,
    payload_bytes: int,
    cap_seconds: float,
) -> tuple[int, int, float]:
    """(echoed, lost, seconds) for ``count`` datagrams with ``window`` in flight."""
    payload = bytes(payload_bytes)
    sent = echoed = lost = 0
    in_flight = 0
    start = time.perf_counter()
    deadline = time.monotonic() + cap_seconds
    while sent < min(window, count):
        send(payload)
        sent += 1
        in_flight += 1
    while in_flight and time.monotonic() < deadline:
        try:
            recv()
            echoed += 1
        except TimeoutError:
            lost += in_flight  # nothing came back for a while: the window is gone
            in_flight = 0
        else:
            in_flight -= 1
        while in_flight < window and sent < count:
            send(payload)
            sent += 1
            in_flight += 1
    return echoed, lost, time.perf_counter() - start


def run_pair(
    send: Callable[[bytes], None],
    recv: Callable[[], bytes],
    args: argparse.Namespace,
) -> dict[str, float]:
    # Warm-up: the proxy's first datagram to a target sets up its state.
    measure_latency(send, recv, 200, args.time_cap_seconds)
    rtts = measure_latency(send, recv, args.latency_samples, args.time_cap_seconds)
    echoed, lost, seconds = measure_rate(
        send, recv, args.datagrams, args.window, args.payload_bytes, args.time_cap_seconds
    )
    rtts.sort()
    return {
        "p50_us": statistics.median(rtts) * 1e6,
        "p99_us": rtts[int(len(rtts) * 0.99) - 1] * 1e6,
        "max_us": rtts[-1] * 1e6,
        "samples": len(rtts),
        "rate": echoed / seconds,
        "echoed": echoed,
        "lost": lost,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datagrams", type=int, default=20_000)
    parser.add_argument("--latency-samples", type=int, default=5_000)
    parser.add_argument("--payload-bytes", type=int, default=64)
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--time-cap-seconds", type=float, default=30.0)
    args = parser.parse_args()

    context = multiprocessing.get_context("spawn")
    echo_conn, echo_child = context.Pipe()
    proxy_conn, proxy_child = context.Pipe()
    with tempfile.TemporaryDirectory(prefix="socksauth-bench-udp-") as directory:
        echo = context.Process(target=_echo_process, args=(echo_child,), daemon=True)
        proxy = context.Process(target=_proxy_process, args=(proxy_child, directory), daemon=True)
        echo.start()
        proxy.start()
        try:
            if not echo_conn.poll(30) or not proxy_conn.poll(60):
                raise SystemExit("the echo server or the proxy did not start")
            echo_port, proxy_port = echo_conn.recv(), proxy_conn.recv()
            target = ("127.0.0.1", echo_port)
            results = {}

            direct = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            direct.connect(target)
            direct.settimeout(LOSS_TIMEOUT_SECONDS)
            results["direct"] = run_pair(direct.send, lambda: direct.recv(65535), args)
            direct.close()

            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            client.bind(("127.0.0.1", 0))
            control, relay = associate(proxy_port, client.getsockname()[1])
            client.connect(relay)
            client.settimeout(LOSS_TIMEOUT_SECONDS)
            header = (
                b"\x00\x00\x00\x01" + socket.inet_aton("127.0.0.1") + struct.pack("!H", echo_port)
            )
            header_bytes = len(header)

            def send_proxied(payload: bytes) -> None:
                client.send(header + payload)

            def recv_proxied() -> bytes:
                return client.recv(65535)[header_bytes:]

            results["proxied"] = run_pair(send_proxied, recv_proxied, args)
            client.close()
            control.close()
        finally:
            echo_conn.send("stop")
            proxy_conn.send("stop")
            echo.join(10)
            proxy.join(10)

    print(
        f"UDP echo on 127.0.0.1, {args.payload_bytes}-byte payloads, window {args.window}, "
        f"{args.datagrams} datagrams; latency: 260-byte payloads, one at a time"
    )
    print(f"{'':10}{'rate (dgram/s)':>16}{'lost':>7}{'p50 µs':>9}{'p99 µs':>9}{'max µs':>9}")
    for label, r in results.items():
        print(
            f"{label:10}{r['rate']:>16,.0f}{r['lost']:>7.0f}"
            f"{r['p50_us']:>9.0f}{r['p99_us']:>9.0f}{r['max_us']:>9.0f}"
        )
    ratio = results["proxied"]["rate"] / results["direct"]["rate"]
    added = results["proxied"]["p50_us"] - results["direct"]["p50_us"]
    print(f"proxied/direct rate {ratio:.2f}; the proxy adds {added:.0f} µs at p50")


if __name__ == "__main__":
    main()
