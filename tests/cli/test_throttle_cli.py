"""The throttle shared by two nodes and by two workers on one store, `socksauth throttle
list|clear` lifting a lockout on another node within 2 s, `user passwd` clearing too."""

from __future__ import annotations

import asyncio
import re
import signal
import time

import pytest
from cli_runner import cli, cli_process
from e2e import (
    ALICE,
    ALICE_PASSWORD,
    BOB,
    BOB_PASSWORD,
    WAIT_SECONDS,
    EchoServer,
    ProxyFactory,
    RunningProxy,
    running_two_workers,
)
from python_socks import ProxyError
from python_socks.async_.asyncio import Proxy

from socksauth.auth import accounts
from socksauth.store.users import SqlUserStore

QUICK = {"login_delay_seconds": 0.01, "login_max_delay_seconds": 0.02}
SOURCE = "127.0.0.2"


async def logs_in(
    port: int, echo: EchoServer, user: str = ALICE, password: str = ALICE_PASSWORD
) -> bool:
    proxy = Proxy.from_url(f"socks5://{user}:{password}@127.0.0.1:{port}")
    try:
        sock = await proxy.connect(
            echo.host, echo.port, timeout=WAIT_SECONDS, local_addr=(SOURCE, 0)
        )
    except ProxyError:
        return False
    sock.close()
    return True


async def refused_at_once(port: int, echo: EchoServer) -> bool:
    """Alice's right password refused without a verification: her pair is locked."""
    started = time.monotonic()
    ok = await logs_in(port, echo)
    return not ok and time.monotonic() - started < 0.5


async def settle(*nodes: RunningProxy) -> None:
    """Long enough for every node to flush its batch and read the others' events."""
    await asyncio.sleep(0.5)
    for node in nodes:
        await node.caught_up()
    await asyncio.sleep(0.3)  # the sharing task reads the events at its next round (0.1 s)


async def test_failures_on_two_nodes_add_up_and_the_lockout_holds_on_both(
    start_proxy: ProxyFactory, echo_server: EchoServer
) -> None:
    async with (
        start_proxy(node_name="node-a", **QUICK) as a,
        start_proxy(node_name="node-b", **QUICK) as b,
    ):
        for index in range(10):  # 5 on each node: neither reaches 10 alone
            node = a if index % 2 == 0 else b
            assert not await logs_in(node.port, echo_server, password=f"wrong-{index}")
            await asyncio.sleep(0.15)  # one batch each
        await settle(a, b)
        assert await refused_at_once(a.port, echo_server)
        assert await refused_at_once(b.port, echo_server)
        assert await logs_in(b.port, echo_server, BOB, BOB_PASSWORD)  # bob: not affected


async def test_throttle_clear_lifts_a_lockout_on_another_node_within_2_s(
    start_proxy: ProxyFactory, echo_server: EchoServer, database_url: str
) -> None:
    async with (
        start_proxy(node_name="node-a", **QUICK) as a,
        start_proxy(node_name="node-b", **QUICK) as b,
    ):
        for index in range(10):
            assert not await logs_in(a.port, echo_server, password=f"wrong-{index}")
        await settle(a, b)
        assert await refused_at_once(b.port, echo_server)
        listed = await cli_process("throttle", "list", "--database-url", database_url)
        assert listed.returncode == 0, listed.stderr
        assert re.search(rf"^alice\s+{re.escape(SOURCE)}\s+10\s+locked until ", listed.stdout, re.M)
        cleared = await cli_process(
            "throttle", "clear", "--user", ALICE, "--client", "127.0.0.0/8",
            "--database-url", database_url,
        )  # fmt: skip
        assert cleared.returncode == 0, cleared.stderr
        assert "cleared 1 pair(s) for 'alice' from 127.0.0.0/8" in cleared.stdout
        returned_at = time.monotonic()
        while not await logs_in(b.port, echo_server):
            assert time.monotonic() - returned_at < 2.0, "still locked on node b after 2 s"
            await asyncio.sleep(0.02)
        print(f"throttle clear -> node b: {(time.monotonic() - returned_at) * 1000:.0f} ms")
        assert await logs_in(a.port, echo_server)


async def test_an_admin_password_change_clears_the_users_lockout_everywhere(
    start_proxy: ProxyFactory, echo_server: EchoServer, user_store: SqlUserStore
) -> None:
    async with start_proxy(node_name="node-a", **QUICK) as a:
        for index in range(10):
            assert not await logs_in(a.port, echo_server, password=f"wrong-{index}")
        await settle(a)
        assert await refused_at_once(a.port, echo_server)
        await accounts.change_password(user_store, ALICE, "a-New-passw0rd-17")
        changed_at = time.monotonic()
        while not await logs_in(a.port, echo_server, password="a-New-passw0rd-17"):
            assert time.monotonic() - changed_at < 2.0
            await asyncio.sleep(0.02)


async def test_bad_input_is_one_line_and_exit_2() -> None:
    result = await cli("throttle", "clear", "--client", "not-an-address")
    assert result.exit_code == 2
    assert "is not an IP address or network" in result.output


@pytest.mark.timeout(90)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_two_workers_share_one_allowance(
    database_url: str, user_store: SqlUserStore, echo_server: EchoServer
) -> None:
    async with running_two_workers(
        database_url, "--login-delay", "0.01", "--login-max-delay", "0.02"
    ) as running:
        for index in range(10):
            assert not await logs_in(running.port, echo_server, password=f"wrong-{index}")
            await asyncio.sleep(0.15)
        await asyncio.sleep(1.5)  # the last flush, then the other worker's change poll
        # Whichever worker takes them, alice is locked out of this address: 10 in all.
        try:
            for _ in range(6):
                assert await refused_at_once(running.port, echo_server)
            assert await logs_in(running.port, echo_server, BOB, BOB_PASSWORD)
        finally:
            # Stopped the way a service manager does: the supervisor stops its workers.
            running.process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                await running.process.wait()
