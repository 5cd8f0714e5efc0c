"""The HTTP proxy on the SOCKS port: CONNECT with Basic credentials, the same users, policy,
relay and audit as SOCKS5, tried with curl and raw sockets on loopback."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator

import pytest
from e2e import (
    ALICE,
    ALICE_PASSWORD,
    BOB,
    BOB_PASSWORD,
    HTTP_BODY,
    WAIT_SECONDS,
    EchoServer,
    HttpServer,
    ProxyFactory,
    RunningProxy,
    TlsFiles,
    assert_serves_a_good_client,
    closed_port,
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
