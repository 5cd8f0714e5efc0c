"""`socksauth serve --workers N`: several processes on one port, supervised, stopped together."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator

import pytest
from e2e import (
    EchoServer,
    Supervisor,
    assert_serves_a_good_client,
    eventually,
    running_two_workers,
    serve_with_two_workers,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.store.users import SqlUserStore

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
async def supervisor(
    database_url: str,
    user_store: SqlUserStore,
) -> AsyncIterator[Supervisor]:
    # No crash-loop guard: a worker killed however soon after its start is restarted.
    async with running_two_workers(database_url, "--worker-min-uptime", "0") as running:
        yield running


async def test_two_workers_serve_one_port_and_stop_together_on_sigterm(
    supervisor: Supervisor,
    echo_server: EchoServer,
) -> None:
    await eventually(lambda: len(supervisor.worker_pids()) == 2, what="two workers")
    workers = supervisor.worker_pids()
    for _ in range(20):
        await assert_serves_a_good_client(supervisor.port, echo_server)

    supervisor.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        assert await supervisor.process.wait() == 0
    # The supervisor waited for (and so reaped) every worker before it exited.
    assert all(not os.path.exists(f"/proc/{pid}") for pid in workers)


async def test_a_worker_that_dies_is_restarted_and_the_port_keeps_serving(
    supervisor: Supervisor,
    echo_server: EchoServer,
) -> None:
    await eventually(lambda: len(supervisor.worker_pids()) == 2, what="two workers")
    victim = min(supervisor.worker_pids())
    os.kill(victim, signal.SIGKILL)
    await eventually(
        lambda: len(supervisor.worker_pids()) == 2 and victim not in supervisor.worker_pids(),
        what="a replacement worker",
    )
    for _ in range(10):
        await assert_serves_a_good_client(supervisor.port, echo_server)
    supervisor.process.send_signal(signal.SIGINT)
    async with asyncio.timeout(30):
        assert await supervisor.process.wait() == 0


async def test_a_worker_that_dies_right_after_starting_stops_them_all(
    database_url: str,
    user_store: SqlUserStore,
) -> None:
    # The crash-loop guard at its default: a restart would only die again, so all stop.
    async with running_two_workers(database_url) as supervisor:
        await eventually(lambda: len(supervisor.worker_pids()) == 2, what="two workers")
        os.kill(min(supervisor.worker_pids()), signal.SIGKILL)
        async with asyncio.timeout(30):
            assert await supervisor.process.wait() == 1


async def test_workers_do_not_start_on_a_database_that_is_behind(
    unmigrated_engine: AsyncEngine, database_url: str
) -> None:
    process = await serve_with_two_workers(database_url)
    async with asyncio.timeout(30):
        _, stderr = await process.communicate()
    assert process.returncode == 1
    assert "socksauth db upgrade" in stderr.decode()
    assert "Traceback" not in stderr.decode()
