"""`socksauth serve --admin-listen` as a process: with one worker, and with two, where whichever
worker answers a scrape reports what all of them counted, also the counts of a worker that died."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import AsyncIterator

import httpx
import pytest
from e2e import (
    EchoServer,
    Supervisor,
    allow_loopback_targets,
    assert_serves_a_good_client,
    eventually,
    running_two_workers,
)
from prometheus_client.parser import text_string_to_metric_families

from socksauth.store.users import SqlUserStore

pytestmark = pytest.mark.timeout(90)

# assert_serves_a_good_client sends and receives this many bytes.
ROUND_TRIP_BYTES = len(b"still serving?")
CLIENTS = 20


@pytest.fixture
async def supervisor(
    database_url: str,
    user_store: SqlUserStore,
) -> AsyncIterator[Supervisor]:
    # No crash-loop guard: a worker killed however soon after its start is restarted.
    async with running_two_workers(
        database_url, "--admin-listen", "127.0.0.1:0", "--worker-min-uptime", "0"
    ) as running:
        yield running


async def scrape(admin: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    async with httpx.AsyncClient(timeout=10.0) as client:
        response = await client.get(f"{admin}/metrics")
    assert response.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def closed_and_bytes(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float],
) -> tuple[float, ...]:
    return (
        samples.get(("socksauth_connections_total", frozenset({("outcome", "closed")})), 0.0),
        samples.get(("socksauth_bytes_from_client_total", frozenset()), 0.0),
        samples.get(("socksauth_bytes_to_client_total", frozenset()), 0.0),
    )


async def test_every_scrape_sums_all_workers_also_after_one_died(
    supervisor: Supervisor,
    echo_server: EchoServer,
) -> None:
    await eventually(lambda: len(supervisor.worker_pids()) == 2, what="two workers")
    for _ in range(CLIENTS):
        await assert_serves_a_good_client(supervisor.port, echo_server)
    expected = (CLIENTS, CLIENTS * ROUND_TRIP_BYTES, CLIENTS * ROUND_TRIP_BYTES)

    # The kernel spreads the clients over both workers, and the scrapes too: each scrape must
    # still see all of them (a worker counts a client once it has seen it close).
    last: tuple[float, ...] = ()

    async def all_counted() -> bool:
        nonlocal last
        last = closed_and_bytes(await scrape(supervisor.admin))
        return last == expected

    for _ in range(500):
        if await all_counted():
            break
        await asyncio.sleep(0.01)
    assert last == expected
    for _ in range(10):
        assert closed_and_bytes(await scrape(supervisor.admin)) == expected

    # A worker killed: its counts stay in the totals, and its replacement serves the admin
    # port too.
    victim = min(supervisor.worker_pids())
    os.kill(victim, signal.SIGKILL)
    await eventually(
        lambda: len(supervisor.worker_pids()) == 2 and victim not in supervisor.worker_pids(),
        what="a replacement worker",
    )
    for _ in range(10):
        assert closed_and_bytes(await scrape(supervisor.admin)) == expected

    supervisor.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        assert await supervisor.process.wait() == 0


async def test_one_process_serves_the_admin_address_it_was_given(
    database_url: str,
    user_store: SqlUserStore,
    echo_server: EchoServer,
) -> None:
    await allow_loopback_targets(database_url)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "socksauth", "serve", "--workers", "1",
        "--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0",
        "--database-url", database_url,
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stderr is not None
    try:
        port, admin = 0, ""
        async with asyncio.timeout(30):
            while not (port and admin):
                line = (await process.stderr.readline()).decode()
                assert line, "the server exited before it listened"
                if match := re.search(r"listening on 127\.0\.0\.1:(\d+)", line):
                    port = int(match.group(1))
                if match := re.search(r"admin listener .* on (http://127\.0\.0\.1:\d+)", line):
                    admin = match.group(1)
        await assert_serves_a_good_client(port, echo_server)
        expected = (1, ROUND_TRIP_BYTES, ROUND_TRIP_BYTES)
        for _ in range(500):
            if closed_and_bytes(await scrape(admin)) == expected:
                break
            await asyncio.sleep(0.01)
        assert closed_and_bytes(await scrape(admin)) == expected
        async with httpx.AsyncClient(timeout=10.0) as client:
            assert (await client.get(f"{admin}/readyz")).status_code == 200
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
