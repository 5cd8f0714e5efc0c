"""The login throttle against real clients (python-socks, curl) from several loopback
addresses: the pair that fails pays, its neighbours and its owner do not."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import shutil
import time

import pytest
from e2e import (
    ALICE,
    ALICE_PASSWORD,
    BOB,
    BOB_PASSWORD,
    WAIT_SECONDS,
    EchoServer,
    HttpServer,
    ProxyFactory,
)
from python_socks import ProxyError
from python_socks.async_.asyncio import Proxy

CURL = shutil.which("curl")

# Delays of a few milliseconds instead of seconds where a test needs many failures: the
# thresholds are what is under test, the real delays are measured where they matter.
QUICK = {"login_delay_seconds": 0.01, "login_max_delay_seconds": 0.04}


async def logs_in(
    port: int, echo: EchoServer, source: str, user: str = ALICE, password: str = ALICE_PASSWORD
) -> bool:
    """Whether python-socks, connecting from ``source``, gets a tunnel to the echo server."""
    proxy = Proxy.from_url(f"socks5://{user}:{password}@127.0.0.1:{port}")
    try:
        sock = await proxy.connect(
            echo.host, echo.port, timeout=WAIT_SECONDS, local_addr=(source, 0)
        )
    except ProxyError:
        return False
    sock.close()
    return True


async def timed_login(
    port: int, echo: EchoServer, source: str, user: str, password: str
) -> tuple[bool, float]:
    started = time.monotonic()
    ok = await logs_in(port, echo, source, user, password)
    return ok, time.monotonic() - started


async def fail(
    port: int, echo: EchoServer, source: str, user: str, times: int, prefix: str = "wrong"
) -> None:
    for index in range(times):
        assert not await logs_in(port, echo, source, user, f"{prefix}-{index}")


async def curl_fetch(port: int, http: HttpServer, source: str, user: str, password: str) -> float:
    """Seconds curl, bound to ``source``, takes to fetch the page through the proxy."""
    assert CURL is not None
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        CURL, "-q", "--silent", "--fail", "--max-time", "10", "--interface", source,
        "--proxy", f"socks5h://127.0.0.1:{port}", "--proxy-user", f"{user}:{password}",
        f"http://{http.host}:{http.port}/", stdout=asyncio.subprocess.PIPE, env=env,
    )  # fmt: skip
    stdout, _ = await process.communicate()
    assert process.returncode == 0, process.returncode
    assert stdout
    return time.monotonic() - started


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
async def test_bob_is_not_slowed_by_alices_failures_from_the_same_address(
    start_proxy: ProxyFactory,
    echo_server: EchoServer,
    http_server: HttpServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with start_proxy() as proxy:
        await curl_fetch(proxy.port, http_server, "127.0.0.2", BOB, BOB_PASSWORD)  # warm
        baseline = await curl_fetch(proxy.port, http_server, "127.0.0.2", BOB, BOB_PASSWORD)
        # Alice's 3 free failures, then delays of 0.5, 1, 2, 4, 4, 4, 4 s: locked at the 10th.
        # Sped up: the delays are checked on their own below.
        await fail(proxy.port, echo_server, "127.0.0.2", ALICE, 3)
        ok, waited = await timed_login(proxy.port, echo_server, "127.0.0.2", ALICE, "wrong-x")
        assert not ok and waited >= 0.5
        with caplog.at_level(logging.INFO, "socksauth"):
            # The rest of the way with short delays (the same thresholds).
            throttle = proxy.server.authenticator.throttle
            throttle.settings = dataclasses.replace(
                throttle.settings, delay_seconds=0.01, max_delay_seconds=0.04
            )
            await fail(proxy.port, echo_server, "127.0.0.2", ALICE, 6, prefix="more")
            # Locked out: even the right password is refused, at once, without verifying.
            ok, waited = await timed_login(
                proxy.port, echo_server, "127.0.0.2", ALICE, ALICE_PASSWORD
            )
            assert not ok and waited < 0.5
        assert "locked for 60 s after 10 failed logins" in caplog.text
        assert "login failed for user 'alice' (locked_out)" in caplog.text
        assert "login failed for user 'alice' (throttled)" in caplog.text
        # Bob, from the same address, with curl: as fast as before.
        for _ in range(3):
            took = await curl_fetch(proxy.port, http_server, "127.0.0.2", BOB, BOB_PASSWORD)
            assert took < baseline + 0.25, (took, baseline)
        # And Alice from another address is not locked out.
        assert await logs_in(proxy.port, echo_server, "127.0.0.9")


async def test_alice_gets_back_in_from_her_familiar_address(
    start_proxy: ProxyFactory, echo_server: EchoServer
) -> None:
    async with start_proxy(**QUICK) as proxy:
        assert await logs_in(proxy.port, echo_server, "127.0.0.3")  # her usual place
        # Someone guesses her password from elsewhere until locked, and from her address
        # (behind the same NAT) 12 times: delayed there, never locked.
        await fail(proxy.port, echo_server, "127.0.0.4", ALICE, 10)
        assert not await logs_in(proxy.port, echo_server, "127.0.0.4")
        await fail(proxy.port, echo_server, "127.0.0.3", ALICE, 12)
        assert await logs_in(proxy.port, echo_server, "127.0.0.3")


async def test_a_stale_password_repeated_is_delayed_but_never_locked(
    start_proxy: ProxyFactory, echo_server: EchoServer
) -> None:
    async with start_proxy(**QUICK) as proxy:
        for _ in range(30):  # a script with last month's password, retrying
            assert not await logs_in(proxy.port, echo_server, "127.0.0.5", BOB, "last-month")
        assert await logs_in(proxy.port, echo_server, "127.0.0.5", BOB, BOB_PASSWORD)


async def test_a_spraying_address_is_slowed_as_a_whole_and_only_it(
    start_proxy: ProxyFactory, echo_server: EchoServer
) -> None:
    async with start_proxy() as proxy:
        for index in range(10):
            await fail(proxy.port, echo_server, "127.0.0.6", f"user{index}", 1)
        ok, waited = await timed_login(proxy.port, echo_server, "127.0.0.6", BOB, BOB_PASSWORD)
        assert ok and waited >= 0.5
        ok, waited = await timed_login(proxy.port, echo_server, "127.0.0.7", BOB, BOB_PASSWORD)
        assert ok and waited < 0.5


async def test_an_address_gets_at_most_four_delayed_attempts_at_once(
    start_proxy: ProxyFactory, echo_server: EchoServer
) -> None:
    async with start_proxy(login_max_delay_seconds=2.0, login_delay_seconds=2.0) as proxy:
        await fail(proxy.port, echo_server, "127.0.0.8", ALICE, 3)
        started = time.monotonic()
        results = await asyncio.gather(
            *(timed_login(proxy.port, echo_server, "127.0.0.8", ALICE, "w") for _ in range(8))
        )
        assert not any(ok for ok, _ in results)
        waits = sorted(waited for _, waited in results)
        assert all(waited < 1.0 for waited in waits[:4]), waits  # refused at once
        assert all(waited >= 2.0 for waited in waits[4:]), waits  # the four delayed
        assert time.monotonic() - started < 5


async def test_switched_off_nothing_is_delayed_or_locked(
    start_proxy: ProxyFactory, echo_server: EchoServer
) -> None:
    async with start_proxy(login_throttle=False) as proxy:
        await fail(proxy.port, echo_server, "127.0.0.10", ALICE, 12)
        ok, waited = await timed_login(
            proxy.port, echo_server, "127.0.0.10", ALICE, ALICE_PASSWORD
        )
        assert ok and waited < 0.5

