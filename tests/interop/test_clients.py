"""Real SOCKS5 clients against the proxy, on SQLite and PostgreSQL: curl (every way it can be
told to use SOCKS5), python-socks, httpx with socksio, and PySocks; right and wrong passwords."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import shutil
import socket
import warnings

import httpx
import pytest
import socks
from e2e import (
    ALICE,
    ALICE_PASSWORD,
    BOB,
    BOB_PASSWORD,
    HTTP_BODY,
    WAIT_SECONDS,
    EchoServer,
    HttpServer,
    RunningProxy,
    eventually,
)
from python_socks import ProxyError
from python_socks.async_.asyncio import Proxy

CURL = shutil.which("curl")
needs_curl = pytest.mark.skipif(CURL is None, reason="curl is not installed")

# curl's exit code for "the proxy handshake failed" (CURLE_PROXY, curl 7.73 and later);
# older curl reports 7 (could not connect).
CURL_PROXY_HANDSHAKE_FAILED = {97, 7}


async def run_curl(*args: str) -> tuple[int, bytes, bytes]:
    """(exit code, stdout, stderr) of curl with no config file and no proxy from the environment."""
    assert CURL is not None
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    process = await asyncio.create_subprocess_exec(
        CURL, "-q", "--silent", "--show-error", "--max-time", "10", *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )  # fmt: skip
    try:
        async with asyncio.timeout(WAIT_SECONDS + 5):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, stdout, stderr


def tunnel_targets(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The targets of finished CONNECTs as the proxy logged them (as the client asked)."""
    lines = [r.getMessage() for r in caplog.records if r.name == "socksauth.client"]
    return [line.split(" CONNECT ")[1].split()[0] for line in lines if " out=" in line]


@needs_curl
async def test_curl_socks5_with_credentials_fetches_the_page(
    proxy: RunningProxy, http_server: HttpServer
) -> None:
    code, body, err = await run_curl(
        "--socks5", f"{ALICE}:{ALICE_PASSWORD}@127.0.0.1:{proxy.port}",
        f"http://127.0.0.1:{http_server.port}/page",
    )  # fmt: skip
    assert (code, err) == (0, b"")
    assert body == HTTP_BODY
    assert http_server.requests[0].startswith(b"GET /page HTTP/1.1\r\n")


@needs_curl
async def test_curl_socks5_hostname_lets_the_proxy_resolve_the_name(
    proxy: RunningProxy, http_server: HttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="socksauth.client")
    code, body, err = await run_curl(
        "--socks5-hostname", f"127.0.0.1:{proxy.port}",
        "--proxy-user", f"{BOB}:{BOB_PASSWORD}",
        f"http://localhost:{http_server.port}/",
    )  # fmt: skip
    assert (code, err, body) == (0, b"", HTTP_BODY)
    await eventually(lambda: bool(tunnel_targets(caplog)), what="the tunnel's log line")
    assert tunnel_targets(caplog) == [f"localhost:{http_server.port}"]


@needs_curl
@pytest.mark.parametrize("scheme", ["socks5", "socks5h"])
async def test_curl_proxy_url_fetches_the_page(
    proxy: RunningProxy, http_server: HttpServer, scheme: str
) -> None:
    code, body, err = await run_curl(
        "-x", proxy.url(scheme), f"http://localhost:{http_server.port}/"
    )
    assert (code, err, body) == (0, b"", HTTP_BODY)


@needs_curl
async def test_curl_with_a_wrong_password_fails_in_the_proxy_handshake(
    proxy: RunningProxy, http_server: HttpServer
) -> None:
    code, body, _ = await run_curl(
        "-x", proxy.url("socks5h", password="not-alices"), f"http://localhost:{http_server.port}/"
    )
    assert code in CURL_PROXY_HANDSHAKE_FAILED
    assert body == b""
    assert http_server.requests == []


@needs_curl
async def test_curl_to_a_closed_port_reports_a_refused_connection(
    proxy: RunningProxy,
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        code, _, err = await run_curl("-x", proxy.url("socks5h"), f"http://localhost:{port}/")
    assert code in CURL_PROXY_HANDSHAKE_FAILED
    # curl names the reply code it got: X'05' Connection refused.
    assert b"(5)" in err


async def test_python_socks_round_trip_through_an_echo_server(
    proxy: RunningProxy, echo_server: EchoServer
) -> None:
    client = Proxy.from_url(proxy.url())
    sock = await client.connect(echo_server.host, echo_server.port, timeout=WAIT_SECONDS)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(b"python-socks says hi")
        async with asyncio.timeout(WAIT_SECONDS):
            assert await reader.readexactly(20) == b"python-socks says hi"
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_python_socks_with_remote_dns_reaches_a_named_target(
    proxy: RunningProxy, echo_server: EchoServer
) -> None:
    client = Proxy.from_url(proxy.url(), rdns=True)
    sock = await client.connect("localhost", echo_server.port, timeout=WAIT_SECONDS)
    reader, writer = await asyncio.open_connection(sock=sock)
    try:
        writer.write(b"rdns")
        async with asyncio.timeout(WAIT_SECONDS):
            assert await reader.readexactly(4) == b"rdns"
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def test_python_socks_with_a_wrong_password_raises_proxy_error(
    proxy: RunningProxy, echo_server: EchoServer
) -> None:
    client = Proxy.from_url(proxy.url(password="not-alices"))
    with pytest.raises(ProxyError):
        await client.connect(echo_server.host, echo_server.port, timeout=WAIT_SECONDS)
    assert echo_server.peers == []


async def test_httpx_get_through_the_proxy(proxy: RunningProxy, http_server: HttpServer) -> None:
    url = proxy.url()
    async with httpx.AsyncClient(proxy=url, trust_env=False, timeout=WAIT_SECONDS) as client:
        response = await client.get(f"http://127.0.0.1:{http_server.port}/httpx")
    assert response.status_code == 200
    assert response.content == HTTP_BODY
    assert http_server.requests[0].startswith(b"GET /httpx HTTP/1.1\r\n")


async def test_httpx_with_a_wrong_password_fails_without_reaching_the_target(
    proxy: RunningProxy, http_server: HttpServer
) -> None:
    url = proxy.url(user=BOB, password=ALICE_PASSWORD)
    async with httpx.AsyncClient(proxy=url, trust_env=False, timeout=WAIT_SECONDS) as client:
        with pytest.raises(httpx.ProxyError, match="Invalid username/password"):
            await client.get(f"http://127.0.0.1:{http_server.port}/")
    assert http_server.requests == []
    # httpcore 1.0.9 does not close its socket to the proxy when the SOCKS5 handshake fails
    # (AsyncSocks5Connection.handle_async_request): collect it here, where its
    # ResourceWarning is expected, rather than in whichever test the garbage collector hits.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def pysocks_exchange(proxy_port: int, target_port: int, password: str) -> bytes:
    sock = socks.socksocket()
    try:
        sock.settimeout(WAIT_SECONDS)
        sock.set_proxy(socks.SOCKS5, "127.0.0.1", proxy_port, username=ALICE, password=password)
        sock.connect(("127.0.0.1", target_port))
        sock.sendall(b"pysocks")
        received = b""
        while len(received) < 7:
            chunk = sock.recv(7 - len(received))
            if not chunk:
                break
            received += chunk
        return received
    finally:
        sock.close()


async def test_pysocks_round_trip_through_an_echo_server(
    proxy: RunningProxy, echo_server: EchoServer
) -> None:
    # PySocks blocks: run it in a thread so the proxy on this loop keeps running.
    received = await asyncio.to_thread(
        pysocks_exchange, proxy.port, echo_server.port, ALICE_PASSWORD
    )
    assert received == b"pysocks"


async def test_pysocks_with_a_wrong_password_raises_an_authentication_error(
    proxy: RunningProxy, echo_server: EchoServer
) -> None:
    # PySocks wraps its SOCKS5AuthError in a GeneralProxyError.
    with pytest.raises(socks.ProxyError, match="SOCKS5 authentication failed"):
        await asyncio.to_thread(pysocks_exchange, proxy.port, echo_server.port, "not-alices")
