"""`socksauth serve --workers N`: several processes on one port, supervised, stopped together."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator

import pytest
from e2e import (
    EchoServer,
    allow_loopback_targets,
    assert_serves_a_good_client,
    echo_server,  # noqa: F401  (fixture)
    eventually,
    user_store,  # noqa: F401  (fixture)
)
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.store.users import SqlUserStore

pytestmark = pytest.mark.timeout(90)


class Supervisor:
    def __init__(self, process: asyncio.subprocess.Process, port: int) -> None:
        self.process = process
        self.port = port

    def worker_pids(self) -> set[int]:
        children = f"/proc/{self.process.pid}/task/{self.process.pid}/children"
        try:
            with open(children) as file:
                return {int(pid) for pid in file.read().split()}
        except FileNotFoundError:
            return set()


async def serve_with_two_workers(database_url: str) -> asyncio.subprocess.Process:
    """`socksauth serve --workers 2` on a free loopback port, its log on a pipe."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "socksauth", "serve", "--workers", "2",
        "--listen", "127.0.0.1:0", "--database-url", database_url,
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip


@pytest.fixture
async def supervisor(
    database_url: str,
    user_store: SqlUserStore,  # noqa: F811
) -> AsyncIterator[Supervisor]:
    await allow_loopback_targets(database_url)  # the echo target listens on loopback
    process = await serve_with_two_workers(database_url)
    assert process.stderr is not None
    port = 0
    async with asyncio.timeout(30):
        while not port:
            line = (await process.stderr.readline()).decode()
            assert line, "the server exited before it listened"
            if match := re.search(r"listening on 127\.0\.0\.1:(\d+) \(2 workers\)", line):
                port = int(match.group(1))
    drain = asyncio.create_task(process.stderr.read())
    running = Supervisor(process, port)
    try:
        yield running
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        for pid in running.worker_pids():
            os.kill(pid, signal.SIGKILL)
        drain.cancel()


async def test_two_workers_serve_one_port_and_stop_together_on_sigterm(
    supervisor: Supervisor,
    echo_server: EchoServer,  # noqa: F811
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
    echo_server: EchoServer,  # noqa: F811
) -> None:
    await eventually(lambda: len(supervisor.worker_pids()) == 2, what="two workers")
    # Let the workers pass the supervisor's "died right after starting" window.
    await asyncio.sleep(5.5)
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


async def test_workers_do_not_start_on_a_database_that_is_behind(
    unmigrated_engine: AsyncEngine, database_url: str
) -> None:
    process = await serve_with_two_workers(database_url)
    async with asyncio.timeout(30):
        _, stderr = await process.communicate()
    assert process.returncode == 1
    assert "socksauth db upgrade" in stderr.decode()
    assert "Traceback" not in stderr.decode()
