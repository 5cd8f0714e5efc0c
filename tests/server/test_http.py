"""The HTTP proxy on the SOCKS port: CONNECT with Basic credentials, the same users, policy,
relay and audit as SOCKS5, tried with curl and raw sockets on loopback."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import h11
import httpx
import pytest
from e2e import (
    ALICE,
    ALICE_PASSWORD,
    BOB,
    BOB_PASSWORD,
    HTTP_BODY,
    USERNAME_PASSWORD,
    WAIT_SECONDS,
    EchoServer,
    HttpServer,
    ProxyFactory,
    RunningProxy,
    TlsFiles,
    assert_serves_a_good_client,
    closed_port,
    credentials,
    greeting,
    http_connect,
    make_loopback_certificate,
    raw_connection,
    read_exactly,
    read_http_head,
    read_until_closed,
    running_https_server,
)

from socksauth.auth import accounts
from socksauth.protocol.http import MAX_HEAD_BYTES
from socksauth.store.audit import SqlAuditStore
from socksauth.store.interfaces import AuditEntry, AuditQuery

ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"


async def curl(*args: str) -> tuple[int, bytes, bytes]:
    """curl with ``args``, no proxy from the environment; (exit code, stdout, stderr)."""
    env = {name: value for name, value in os.environ.items() if "proxy" not in name.lower()}
    process = await asyncio.create_subprocess_exec(
        "curl", "--silent", "--show-error", "--max-time", "10", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    async with asyncio.timeout(WAIT_SECONDS + 5):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out, err


async def entries(proxy: RunningProxy) -> list[AuditEntry]:
    """The audit rows, read after the proxy stopped (its audit is flushed then)."""
    store = SqlAuditStore(proxy.store._engine)
    return list(await store.find_entries(AuditQuery(limit=None)))


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_loopback_certificate(str(tmp_path_factory.mktemp("tls")))


@pytest.fixture
async def https_server(tls_files: TlsFiles) -> AsyncIterator[HttpServer]:
    async with running_https_server(tls_files) as https:
        yield https


# --- CONNECT with Basic credentials ------------------------------------------------------------


async def test_curl_tunnels_to_an_http_target_through_connect_and_the_audit_says_http(
    start_proxy: ProxyFactory, http_server: HttpServer
) -> None:
    async with start_proxy() as proxy:
        code, out, err = await curl(
            "--proxytunnel", "--proxy", proxy.url("http"),
            f"http://127.0.0.1:{http_server.port}/page",
        )  # fmt: skip
        assert (code, out) == (0, HTTP_BODY), err
    assert http_server.requests[0].startswith(b"GET /page HTTP/1.1\r\n")
    # Through a tunnel the target sees the client's own request, no proxy header in it.
    assert b"proxy-authorization" not in http_server.requests[0].lower()
    (entry,) = await entries(proxy)
    assert (entry.protocol, entry.command, entry.username) == ("http", "connect", ALICE)
    assert (entry.target_host, entry.target_port) == ("127.0.0.1", http_server.port)
    assert (entry.outcome, entry.reply, entry.requests) == ("closed", 0, 0)
    assert entry.bytes_to_client > len(HTTP_BODY) and entry.bytes_from_client > 0


async def test_curl_reaches_an_https_target_with_proxy_user(
    proxy: RunningProxy, https_server: HttpServer, tls_files: TlsFiles
) -> None:
    code, out, err = await curl(
        "--proxy", f"http://127.0.0.1:{proxy.port}", "--proxy-user", f"{ALICE}:{ALICE_PASSWORD}",
        "--cacert", tls_files.cert, f"https://127.0.0.1:{https_server.port}/secure",
    )  # fmt: skip
    assert (code, out) == (0, HTTP_BODY), err
    assert https_server.requests[0].startswith(b"GET /secure HTTP/1.1\r\n")


async def test_bytes_pipelined_after_the_connect_head_go_to_the_tunnel_in_order(
    proxy: RunningProxy, echo_server: EchoServer
) -> None:
    async with raw_connection(proxy.port) as (reader, writer):
        # One write: the head, then tunnel bytes before any answer (as a client in a hurry).
        writer.write(http_connect(echo_server.host, echo_server.port) + b"early bytes")
        assert await read_http_head(reader) == ESTABLISHED
        assert await read_exactly(reader, 11) == b"early bytes"
        writer.write(b" and later")
        assert await read_exactly(reader, 10) == b" and later"
        writer.write_eof()
        assert await read_until_closed(reader) == b""


async def test_a_connect_head_sent_byte_by_byte_opens_the_same_tunnel(
    proxy: RunningProxy, echo_server: EchoServer
) -> None:
    async with raw_connection(proxy.port) as (reader, writer):
        for byte in http_connect(echo_server.host, echo_server.port):
            writer.write(bytes((byte,)))
            await writer.drain()
        assert await read_http_head(reader) == ESTABLISHED
        writer.write(b"ping")
        assert await read_exactly(reader, 4) == b"ping"


async def test_socks5_and_http_share_one_port_one_user_table_and_one_audit(
    start_proxy: ProxyFactory, echo_server: EchoServer
) -> None:
    async with start_proxy() as proxy:
        await assert_serves_a_good_client(proxy.port, echo_server)  # SOCKS5 as alice
        async with raw_connection(proxy.port) as (reader, writer):
            writer.write(http_connect(echo_server.host, echo_server.port))
            assert await read_http_head(reader) == ESTABLISHED
            writer.write(b"ping")
            assert await read_exactly(reader, 4) == b"ping"
            writer.write_eof()
            assert await read_until_closed(reader) == b""
    rows = await entries(proxy)
    assert sorted((row.protocol, row.username, row.outcome) for row in rows) == [
        ("http", ALICE, "closed"),
        ("socks5", ALICE, "closed"),
    ]
    store = SqlAuditStore(proxy.store._engine)
    (http_row,) = await store.find_entries(AuditQuery(protocol="http"))
    assert http_row.protocol == "http"
    (stats,) = await store.user_stats(protocol="socks5")
    assert (stats.username, stats.connections) == (ALICE, 1)


async def test_with_http_off_an_http_head_is_closed_without_a_reply(
    start_proxy: ProxyFactory, echo_server: EchoServer
) -> None:
    async with start_proxy(http_enabled=False) as proxy:
        async with raw_connection(proxy.port) as (reader, writer):
            writer.write(http_connect(echo_server.host, echo_server.port))
            writer.write_eof()
            assert await read_until_closed(reader) == b""
        await assert_serves_a_good_client(proxy.port, echo_server)
    assert not echo_server.peers[:-1]  # only the SOCKS5 client reached the target


async def test_a_disabled_account_ends_its_http_tunnel(
    proxy: RunningProxy, echo_server: EchoServer
) -> None:
    async with raw_connection(proxy.port) as (reader, writer):
        writer.write(http_connect(echo_server.host, echo_server.port, BOB, BOB_PASSWORD))
        assert await read_http_head(reader) == ESTABLISHED
        writer.write(b"ping")
        assert await read_exactly(reader, 4) == b"ping"
        await accounts.disable(proxy.store, BOB)
        await proxy.caught_up()
        assert await read_until_closed(reader) == b""


# --- refusals: 407, 403, 502, 504, 400, 431, 408 ------------------------------------------------


def status_of(head: bytes) -> int:
    return int(head.split(b" ", 2)[1])


async def test_no_credentials_get_407_with_the_basic_realm_and_a_close_and_no_audit_row(
    start_proxy: ProxyFactory, echo_server: EchoServer
) -> None:
    async with start_proxy() as proxy:
        async with raw_connection(proxy.port) as (reader, writer):
            writer.write(http_connect(echo_server.host, echo_server.port, user=None))
            head = await read_http_head(reader)
            assert head.startswith(b"HTTP/1.1 407 Proxy Authentication Required\r\n")
            assert b'\r\nProxy-Authenticate: Basic realm="socksauth"\r\n' in head
            assert await read_until_closed(reader) == b""
        code, out, _ = await curl(
            "--proxytunnel", "--proxy", f"http://127.0.0.1:{proxy.port}",
            "--write-out", "%{http_connect}", f"http://127.0.0.1:{echo_server.port}/",
        )  # fmt: skip
        assert code != 0 and out.endswith(b"407")
    assert not echo_server.peers
    # Every browser's first request is answered so: a row per challenge would drown the audit.
    assert await entries(proxy) == []


async def test_curl_with_a_wrong_password_gets_407_and_a_failed_login_in_the_audit(
    start_proxy: ProxyFactory, http_server: HttpServer
) -> None:
    async with start_proxy() as proxy:
        code, out, _ = await curl(
            "--proxy", proxy.url("http", password="Wrong-Password-1"),
            "--write-out", "%{http_code}", f"http://127.0.0.1:{http_server.port}/",
        )  # fmt: skip
        assert (code, out) == (0, b"407")
        # The same account, right password, on SOCKS5: one user table, nothing locked yet.
        code, out, err = await curl(
            "--proxy", proxy.url("socks5h"), f"http://127.0.0.1:{http_server.port}/"
        )
        assert (code, out) == (0, HTTP_BODY), err
    assert not http_server.requests[1:]  # only the SOCKS5 client's request arrived
    rows = sorted(await entries(proxy), key=lambda row: row.protocol)
    assert [(row.protocol, row.username, row.outcome, row.command) for row in rows] == [
        ("http", ALICE, "auth_failed", None),
        ("socks5", ALICE, "closed", "connect"),
    ]
    (stats,) = await SqlAuditStore(proxy.store._engine).user_stats()
    assert (stats.failed_logins, stats.connections) == (1, 1)


async def test_a_target_the_policy_denies_gets_403(
    start_proxy: ProxyFactory, echo_server: EchoServer
) -> None:
    async with (
        start_proxy(allow_loopback=False) as proxy,
        raw_connection(proxy.port) as (reader, writer),
    ):
        writer.write(http_connect(echo_server.host, echo_server.port))
        assert (await read_http_head(reader)).startswith(b"HTTP/1.1 403 Forbidden\r\n")
        assert await read_until_closed(reader) == b""
    assert not echo_server.peers
    (row,) = await entries(proxy)
    assert (row.protocol, row.outcome, row.reply) == ("http", "denied", 0x02)


async def test_a_refused_connect_gets_502_and_a_timed_out_one_504(
    start_proxy: ProxyFactory,
) -> None:
    refused = closed_port()
    # A listener whose backlog is full: the kernel drops further SYNs, the connect hangs.
    full = socket.socket()
    full.bind(("127.0.0.1", 0))
    full.listen(0)
    queued = socket.create_connection(full.getsockname())
    try:
        async with start_proxy(connect_timeout_seconds=0.5) as proxy:
            for target, status in ((refused, 502), (full, 504)):
                async with raw_connection(proxy.port) as (reader, writer):
                    writer.write(http_connect("127.0.0.1", target.getsockname()[1]))
                    assert status_of(await read_http_head(reader)) == status
                    assert await read_until_closed(reader) == b""
    finally:
        for sock in (refused, full, queued):
            sock.close()
    rows = sorted(await entries(proxy), key=lambda row: row.reply or 0)
    assert [(row.outcome, row.reply) for row in rows] == [
        ("connect_failed", 0x05),
        ("connect_failed", 0x06),
    ]


@pytest.mark.parametrize(
    "head",
    [
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",  # origin form: a web server's request
        b"CONNECT nowhere HTTP/1.1\r\nHost: nowhere\r\n\r\n",
        b"GET https://127.0.0.1/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
    ],
    ids=["origin-form", "connect-without-port", "https-absolute-form"],
)
async def test_a_request_that_is_not_a_proxy_request_gets_400_and_the_server_goes_on(
    proxy: RunningProxy, echo_server: EchoServer, head: bytes
) -> None:
    async with raw_connection(proxy.port) as (reader, writer):
        writer.write(head)
        assert (await read_http_head(reader)).startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert await read_until_closed(reader) == b""
    await assert_serves_a_good_client(proxy.port, echo_server)


async def test_a_head_over_16_kib_gets_431_and_a_close(
    proxy: RunningProxy, echo_server: EchoServer
) -> None:
    async with raw_connection(proxy.port) as (reader, writer):
        filler = b"X-Filler: " + b"a" * (MAX_HEAD_BYTES + 100) + b"\r\n"
        writer.write(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n" + filler)
        head = await read_http_head(reader)
        assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
        assert await read_until_closed(reader) == b""
    await assert_serves_a_good_client(proxy.port, echo_server)


async def test_a_head_slower_than_the_handshake_deadline_gets_408_and_a_close(
    start_proxy: ProxyFactory,
) -> None:
    async with (
        start_proxy(handshake_timeout_seconds=0.5) as proxy,
        raw_connection(proxy.port) as (reader, writer),
    ):
        writer.write(b"CONNECT 127.0.0.1:1 HTTP/1.1\r\nHost: 127.0.0.1:1\r\n")  # no end
        head = await read_http_head(reader)
        assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
        assert await read_until_closed(reader) == b""


# --- absolute-form forwarding -------------------------------------------------------------------


@dataclass
class Origin:
    """A keep-alive HTTP/1.1 origin (h11's server side): answers each request with what it
    got, and remembers every request's headers and body."""

    port: int = 0
    requests: list[tuple[h11.Request, bytes]] = field(default_factory=list)
    connections: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        conn = h11.Connection(h11.SERVER)
        request: h11.Request | None = None
        body = b""
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Request):
                    request, body = event, b""
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    assert request is not None
                    self.requests.append((request, body))
                    answer = b"%s %s %d" % (request.method, request.target, len(body))
                    if request.target.startswith(b"/big/"):
                        answer = b"x" * int(request.target[5:])
                    headers = [(b"content-length", b"%d" % len(answer)), (b"x-origin", b"1")]
                    writer.write(conn.send(h11.Response(status_code=200, headers=headers)))
                    writer.write(conn.send(h11.Data(data=answer)) + conn.send(h11.EndOfMessage()))
                    await writer.drain()
                    conn.start_next_cycle()
                else:
                    break
        except (ConnectionError, h11.ProtocolError):
            pass
        finally:
            writer.close()

    def headers(self, index: int) -> dict[bytes, bytes]:
        return {bytes(name): bytes(value) for name, value in self.requests[index][0].headers}


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    served = Origin()
    server = await asyncio.start_server(served.handle, "127.0.0.1", 0)
    served.port = server.sockets[0].getsockname()[1]
    async with server:
        yield served


async def test_curl_gets_a_plain_http_url_forwarded_without_the_proxy_credentials(
    start_proxy: ProxyFactory, http_server: HttpServer
) -> None:
    async with start_proxy() as proxy:
        code, out, err = await curl(
            "--proxy", proxy.url("http"), f"http://127.0.0.1:{http_server.port}/page?q=1"
        )
        assert (code, out) == (0, HTTP_BODY), err
    (head,) = http_server.requests
    # Origin form to the origin (RFC 9112 §3.2.1), its Host, and no proxy fields.
    assert head.startswith(b"GET /page?q=1 HTTP/1.1\r\n")
    assert f"\r\nhost: 127.0.0.1:{http_server.port}\r\n".encode() in head.lower()
    assert b"proxy-" not in head.lower()
    (row,) = await entries(proxy)
    assert (row.protocol, row.command, row.username, row.requests) == ("http", "connect", ALICE, 1)
    assert (row.outcome, row.reply, row.target_port) == ("closed", 0, http_server.port)
    assert row.bytes_to_client > len(HTTP_BODY)


async def test_keep_alive_carries_several_requests_counted_in_one_audit_row(
    start_proxy: ProxyFactory, origin: Origin
) -> None:
    async with start_proxy() as proxy:
        urls = [f"http://127.0.0.1:{origin.port}/{n}" for n in range(3)]
        code, out, err = await curl("--verbose", "--proxy", proxy.url("http"), *urls)
        assert code == 0, err
        assert out == b"GET /0 0GET /1 0GET /2 0"
        # One connection to the proxy for all three (curl says so), and one to the origin.
        assert err.count(b"Connected to 127.0.0.1") == 1, err
        assert origin.connections == 1
    (row,) = await entries(proxy)
    assert (row.protocol, row.requests, row.outcome) == ("http", 3, "closed")


async def test_hop_by_hop_fields_are_removed_and_bodies_forwarded_with_their_framing(
    proxy: RunningProxy, origin: Origin
) -> None:
    token = base64.b64encode(f"{ALICE}:{ALICE_PASSWORD}".encode())
    async with raw_connection(proxy.port) as (reader, writer):
        writer.write(
            b"POST http://127.0.0.1:%d/chunked HTTP/1.1\r\nHost: wrong.example\r\n"
            b"Proxy-Authorization: Basic %s\r\nProxy-Connection: keep-alive\r\n"
            b"Connection: keep-alive, X-Hop\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n"
            b"TE: trailers\r\nX-End-To-End: kept\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n" % (origin.port, token)
        )
        head = await read_http_head(reader)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert b"x-origin: 1\r\n" in head.lower()
        assert await read_exactly(reader, len(b"POST /chunked 11")) == b"POST /chunked 11"
        # The connection stays open for the next request: a body with Content-Length.
        writer.write(
            b"PUT http://127.0.0.1:%d/length HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"
            % origin.port
        )
        head = await read_http_head(reader)
        assert await read_exactly(reader, len(b"PUT /length 3")) == b"PUT /length 3"
    headers = origin.headers(0)
    assert headers[b"host"] == b"127.0.0.1:%d" % origin.port  # RFC 9112 §3.2.2
    assert headers[b"x-end-to-end"] == b"kept"
    for hop in (b"proxy-authorization", b"proxy-connection", b"x-hop", b"keep-alive", b"te"):
        assert hop not in headers
    assert origin.requests[0][1] == b"hello world" and origin.requests[1][1] == b"abc"


async def test_httpx_with_an_http_proxy_url_forwards_http_and_tunnels_https(
    proxy: RunningProxy, origin: Origin, https_server: HttpServer, tls_files: TlsFiles
) -> None:
    context = ssl.create_default_context(cafile=tls_files.cert)
    async with httpx.AsyncClient(proxy=proxy.url("http"), verify=context, timeout=10) as client:
        plain = await client.get(f"http://127.0.0.1:{origin.port}/via-httpx")
        secure = await client.get(f"https://127.0.0.1:{https_server.port}/via-connect")
    assert (plain.status_code, plain.text) == (200, "GET /via-httpx 0")
    assert (secure.status_code, secure.content) == (200, HTTP_BODY)
    assert b"proxy-authorization" not in origin.headers(0)


def get(port: int, path: str, user: str = ALICE, password: str = ALICE_PASSWORD) -> bytes:
    """An absolute-form GET to 127.0.0.1:port with Basic credentials."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return (
        f"GET http://127.0.0.1:{port}{path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Proxy-Authorization: Basic {token}\r\n\r\n"
    ).encode()


async def test_each_forwarded_request_is_dialled_under_the_policy_and_a_failure_ends_it(
    proxy: RunningProxy, origin: Origin
) -> None:
    refused = closed_port()
    try:
        async with raw_connection(proxy.port) as (reader, writer):
            writer.write(get(origin.port, "/ok"))
            assert (await read_http_head(reader)).startswith(b"HTTP/1.1 200 ")
            await read_exactly(reader, len(b"GET /ok 0"))
            writer.write(get(refused.getsockname()[1], "/"))
            assert status_of(await read_http_head(reader)) == 502
            assert await read_until_closed(reader) == b""
    finally:
        refused.close()


async def test_a_later_request_with_other_credentials_gets_407(
    proxy: RunningProxy, origin: Origin
) -> None:
    async with raw_connection(proxy.port) as (reader, writer):
        writer.write(get(origin.port, "/a"))
        assert (await read_http_head(reader)).startswith(b"HTTP/1.1 200 ")
        await read_exactly(reader, len(b"GET /a 0"))
        writer.write(get(origin.port, "/b", BOB, BOB_PASSWORD))
        assert status_of(await read_http_head(reader)) == 407
        assert await read_until_closed(reader) == b""
    assert len(origin.requests) == 1


async def test_a_disabled_account_ends_its_keep_alive_forwarding_connection(
    proxy: RunningProxy, origin: Origin
) -> None:
    async with raw_connection(proxy.port) as (reader, writer):
        writer.write(get(origin.port, "/before", BOB, BOB_PASSWORD))
        assert (await read_http_head(reader)).startswith(b"HTTP/1.1 200 ")
        await read_exactly(reader, len(b"GET /before 0"))
        await accounts.disable(proxy.store, BOB)
        await proxy.caught_up()
        assert await read_until_closed(reader) == b""


async def test_the_users_connection_limit_and_bandwidth_hold_for_http_clients(
    proxy: RunningProxy, origin: Origin
) -> None:
    rate = 200_000
    await accounts.set_limits(
        proxy.store, BOB, max_connections=1, max_bandwidth_bytes_per_second=rate
    )
    await proxy.caught_up()
    async with raw_connection(proxy.port) as (reader, writer):
        writer.write(get(origin.port, "/big/600000", BOB, BOB_PASSWORD))
        started = time.monotonic()
        head = await read_http_head(reader)
        assert head.startswith(b"HTTP/1.1 200 ") and b"content-length: 600000" in head.lower()
        # A second connection while this one is open: bob's max_connections is 1.
        async with raw_connection(proxy.port) as (second, writer2):
            writer2.write(http_connect("127.0.0.1", origin.port, BOB, BOB_PASSWORD))
            assert (await read_http_head(second)).startswith(b"HTTP/1.1 403 ")
        assert len(await read_exactly(reader, 600_000)) == 600_000
        elapsed = time.monotonic() - started
    # One second's burst, then the rate: (600 kB - 200 kB) / 200 kB/s = 2 s at least.
    assert elapsed >= (600_000 - rate) / rate * 0.9, elapsed


async def test_behind_a_load_balancer_a_proxy_header_then_a_connect_in_one_write_is_served(
    start_proxy: ProxyFactory, echo_server: EchoServer
) -> None:
    # The client's first bytes come with the header, before the handshake waits for any.
    header = b"PROXY TCP4 203.0.113.7 127.0.0.1 40123 1080\r\n"
    load_balancer = (ipaddress.ip_network("127.0.0.1/32"),)
    async with (
        start_proxy(proxy_protocol_networks=load_balancer) as proxy,
        raw_connection(proxy.port) as (reader, writer),
    ):
        writer.write(header + http_connect(echo_server.host, echo_server.port) + b"ping")
        assert await read_http_head(reader) == ESTABLISHED
        assert await read_exactly(reader, 4) == b"ping"
        writer.write_eof()
        assert await read_until_closed(reader) == b""
    (row,) = await entries(proxy)
    assert (row.protocol, row.client_host, row.client_port) == ("http", "203.0.113.7", 40123)


async def test_wrong_passwords_over_http_and_socks5_count_in_one_login_throttle(
    proxy: RunningProxy, echo_server: EchoServer
) -> None:
    async def http_attempt(password: str) -> None:
        async with raw_connection(proxy.port) as (reader, writer):
            writer.write(http_connect(echo_server.host, echo_server.port, password=password))
            assert status_of(await read_http_head(reader)) == 407

    # The throttle's free failures (3 per name and address), spent over HTTP with three
    # different wrong passwords (a repeat of a recent wrong one is not counted again) ...
    for index in range(3):
        await http_attempt(f"wrong-{index}")
    # ... so the next wrong RFC 1929 login from the same address waits its back-off (0.5 s).
    started = time.monotonic()
    async with raw_connection(proxy.port) as (reader, writer):
        writer.write(greeting(USERNAME_PASSWORD) + credentials(ALICE, "wrong-2"))
        assert await read_exactly(reader, 4) == b"\x05\x02\x01\x01"
    assert time.monotonic() - started >= 0.45
