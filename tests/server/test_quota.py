"""Traffic quotas: parsing and periods, then end to end on SQLite and PostgreSQL: a used-up quota
refuses new requests (0x02, audit quota_exceeded) and ends live tunnels within 2 s, on the sum of
every node's traffic; a change applies live; the count survives a restart."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from e2e import (
    ALICE,
    UDP_ASSOCIATE,
    WAIT_SECONDS,
    EchoServer,
    ProxyFactory,
    eventually,
    login,
    open_tunnel,
    raw_connection,
    read_exactly,
    read_reply,
    reply_to,
    request,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.auth import accounts
from socksauth.errors import ConfigError
from socksauth.server.quota import (
    format_bytes,
    hour_start,
    parse_quota,
    period_start,
    quota_statuses,
    resets_at,
)
from socksauth.store.audit import SqlAuditStore
from socksauth.store.interfaces import AuditQuery
from socksauth.store.usage import SqlTrafficUsage
from socksauth.store.users import SqlUserStore

NOT_ALLOWED = 0x02
CHUNK = 64 * 1024


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10GiB/month", (10 * 1024**3, "month")),
        ("500MB/day", (500 * 1000**2, "day")),
        ("1.5 GiB / week", (int(1.5 * 1024**3), "week")),
        ("50GB/30d", (50 * 1000**3, "30d")),
        ("1000/DAY", (1000, "day")),
    ],
)
def test_quotas_parse_from_size_and_period(text: str, expected: tuple[int, str]) -> None:
    assert parse_quota(text) == expected


@pytest.mark.parametrize(
    "text", ["10GiB", "10XB/month", "10GiB/year", "0/day", "10GiB/0d", "10GiB/91d", "/day"]
)
def test_malformed_quotas_are_refused_with_a_clear_error(text: str) -> None:
    with pytest.raises(ConfigError, match="quota"):
        parse_quota(text)


def test_sizes_format_back_to_what_parses() -> None:
    for amount in (10 * 1024**3, 500 * 1000**2, 999, 3 * 1024**4):
        assert parse_quota(f"{format_bytes(amount)}/day")[0] == amount


def test_periods_begin_and_reset_at_utc_boundaries_by_default() -> None:
    now = datetime(2026, 12, 3, 13, 45, 10, tzinfo=UTC)  # a Thursday
    assert period_start("day", now) == datetime(2026, 12, 3, tzinfo=UTC)
    assert resets_at("day", now) == datetime(2026, 12, 4, tzinfo=UTC)
    assert period_start("week", now) == datetime(2026, 11, 30, tzinfo=UTC)  # Monday
    assert resets_at("week", now) == datetime(2026, 12, 7, tzinfo=UTC)
    assert period_start("month", now) == datetime(2026, 12, 1, tzinfo=UTC)
    assert resets_at("month", now) == datetime(2027, 1, 1, tzinfo=UTC)
    # Rolling: the current hour and the 30 days before it; no reset, hours age out.
    assert period_start("30d", now) == datetime(2026, 11, 3, 13, tzinfo=UTC)
    assert resets_at("30d", now) is None


def test_periods_follow_a_configured_time_zone() -> None:
    berlin = ZoneInfo("Europe/Berlin")
    # 23:30 UTC on 31 December is already 1 January in Berlin.
    now = datetime(2026, 12, 31, 23, 30, tzinfo=UTC)
    assert period_start("month", now, berlin) == datetime(2026, 12, 31, 23, tzinfo=UTC)
    assert resets_at("month", now, berlin) == datetime(2027, 1, 31, 23, tzinfo=UTC)
    india = ZoneInfo("Asia/Kolkata")  # +05:30: hours begin at half past in UTC
    assert hour_start(datetime(2026, 6, 1, 10, 10, tzinfo=UTC), india) == datetime(
        2026, 6, 1, 9, 30, tzinfo=UTC
    )


async def test_usage_sums_every_node_within_the_period(engine: AsyncEngine) -> None:
    usage = SqlTrafficUsage(engine)
    hour = datetime(2026, 12, 3, 13, tzinfo=UTC)
    await usage.add("node-a", hour, {ALICE: 100, "bob": 7})
    await usage.add("node-a", hour, {ALICE: 50})
    await usage.add("node-b", hour, {ALICE: 25})
    await usage.add("node-b", hour - timedelta(days=2), {ALICE: 1000})
    totals = await usage.totals({ALICE: hour - timedelta(hours=1), "bob": hour})
    assert totals == {ALICE: 175, "bob": 7}
    assert (await usage.totals({ALICE: hour - timedelta(days=3)}))[ALICE] == 1175
    assert await usage.prune(hour - timedelta(days=1)) == 1


async def echo_bytes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    """Send ``n`` bytes through a tunnel to the echo server and read them back."""
    sent = 0
    while sent < n:
        size = min(CHUNK, n - sent)
        writer.write(b"q" * size)
        await read_exactly(reader, size)
        sent += size


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> float:
    """Seconds until the proxy closes the tunnel; fails after ``seconds``."""
    started = time.monotonic()
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(seconds):
            while await reader.read(65536):
                pass
    return time.monotonic() - started


async def test_a_used_up_quota_ends_the_tunnel_and_refuses_new_requests(
    start_proxy: ProxyFactory,
    user_store: SqlUserStore,
    echo_server: EchoServer,
    engine: AsyncEngine,
) -> None:
    await accounts.set_limits(user_store, ALICE, quota=(400_000, "day"))
    async with start_proxy() as proxy:
        reader, writer, reply = await open_tunnel(proxy.port, echo_server.host, echo_server.port)
        try:
            assert reply.reply == 0
            # 2 x 100 kB counted (both ways): under the quota, the tunnel stays.
            await echo_bytes(reader, writer, 100_000)
            await asyncio.sleep(2 * proxy.settings.quota_flush_seconds + 0.2)
            await echo_bytes(reader, writer, 1000)
            # Then over it: the tunnel ends within 2 s.
            with contextlib.suppress(ConnectionError):
                await echo_bytes(reader, writer, 150_000)
            assert await closed_within(reader, 2.0) < 2.0
        finally:
            writer.close()
        assert await reply_to(proxy.port, echo_server.host, echo_server.port) == NOT_ALLOWED
        # A bigger quota applies live, through the change notification.
        await accounts.set_limits(user_store, ALICE, quota=(10_000_000, "day"))
        await proxy.caught_up()
        assert await reply_to(proxy.port, echo_server.host, echo_server.port) == 0
    entries = await SqlAuditStore(engine).find_entries(AuditQuery(username=ALICE))
    outcomes = sorted(entry.outcome or "" for entry in entries)
    assert outcomes.count("quota_exceeded") == 2, outcomes  # the tunnel, the refused request
    refused = [e for e in entries if e.outcome == "quota_exceeded" and e.reply == NOT_ALLOWED]
    assert len(refused) == 1
    statuses = await quota_statuses(
        await user_store.list_users(), SqlTrafficUsage(engine), datetime.now(UTC)
    )
    # Everything relayed was counted (the refused request moved nothing).
    relayed = sum(e.bytes_from_client + e.bytes_to_client for e in entries)
    assert statuses[ALICE].used == relayed >= 400_000


async def test_a_quota_lowered_below_the_use_ends_the_open_tunnel_at_once(
    start_proxy: ProxyFactory, user_store: SqlUserStore, echo_server: EchoServer
) -> None:
    await accounts.set_limits(user_store, ALICE, quota=(10_000_000, "week"))
    async with start_proxy() as proxy:
        reader, writer, reply = await open_tunnel(proxy.port, echo_server.host, echo_server.port)
        try:
            assert reply.reply == 0
            await echo_bytes(reader, writer, 100_000)
            await asyncio.sleep(2 * proxy.settings.quota_flush_seconds + 0.2)
            # Nothing moves any more; the new quota alone must end the tunnel.
            await accounts.set_limits(user_store, ALICE, quota=(150_000, "week"))
            assert await closed_within(reader, 2.0) < 2.0
        finally:
            writer.close()


async def test_the_count_survives_a_restart(
    start_proxy: ProxyFactory, user_store: SqlUserStore, echo_server: EchoServer
) -> None:
    await accounts.set_limits(user_store, ALICE, quota=(150_000, "month"))
    async with start_proxy() as proxy:
        reader, writer, reply = await open_tunnel(proxy.port, echo_server.host, echo_server.port)
        assert reply.reply == 0
        await echo_bytes(reader, writer, 50_000)  # 100 kB counted
        writer.close()
    # The count was flushed at stop; a new process starts from it.
    async with start_proxy() as proxy:
        reader, writer, reply = await open_tunnel(proxy.port, echo_server.host, echo_server.port)
        try:
            assert reply.reply == 0
            with contextlib.suppress(ConnectionError):
                await echo_bytes(reader, writer, 30_000)
            assert await closed_within(reader, 2.0) < 2.0
        finally:
            writer.close()
        assert await reply_to(proxy.port, echo_server.host, echo_server.port) == NOT_ALLOWED


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
async def test_a_quota_holds_for_the_sum_of_two_nodes_and_cuts_a_live_tunnel_on_each(
    start_proxy: ProxyFactory,
    user_store: SqlUserStore,
    echo_server: EchoServer,
    engine: AsyncEngine,
) -> None:
    quota = 1_000_000
    await accounts.set_limits(user_store, ALICE, quota=(quota, "day"))
    async with (
        start_proxy(node_name="node-a") as a,
        start_proxy(node_name="node-b", allow_loopback=False) as b,
    ):
        ra, wa, reply_a = await open_tunnel(a.port, echo_server.host, echo_server.port)
        rb, wb, reply_b = await open_tunnel(b.port, echo_server.host, echo_server.port)
        try:
            assert (reply_a.reply, reply_b.reply) == (0, 0)
            # Each node alone stays under the quota (2 x 300 kB each); together they pass it.
            await echo_bytes(ra, wa, 300_000)
            await asyncio.sleep(2 * a.settings.quota_flush_seconds + 0.2)
            await echo_bytes(ra, wa, 1000)  # node a's tunnel is still open
            passed = time.monotonic()
            with contextlib.suppress(ConnectionError):
                await echo_bytes(rb, wb, 300_000)
            # Both tunnels end, including node a's, which moved only 602 kB itself.
            seconds_a = await closed_within(ra, 2.0)
            seconds_b = await closed_within(rb, 2.0)
            assert time.monotonic() - passed < 2.0 + 1.0, (seconds_a, seconds_b)
        finally:
            wa.close()
            wb.close()
        for node in (a, b):
            assert await reply_to(node.port, echo_server.host, echo_server.port) == NOT_ALLOWED
    statuses = await quota_statuses(
        await user_store.list_users(), SqlTrafficUsage(engine), datetime.now(UTC)
    )
    used = statuses[ALICE].used
    assert quota <= used < quota + 400_000, used
    entries = await SqlAuditStore(engine).find_entries(AuditQuery(outcome="quota_exceeded"))
    assert {entry.node for entry in entries} == {"node-a", "node-b"}


async def test_nobody_with_a_quota_means_no_quota_queries(
    start_proxy: ProxyFactory, echo_server: EchoServer
) -> None:
    async with start_proxy() as proxy:
        access = proxy.server.access
        assert access is not None
        assert await reply_to(proxy.port, echo_server.host, echo_server.port) == 0
        await eventually(lambda: proxy.server.active_clients == 0)
        assert access.quotas.used(ALICE) is None


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.DatagramTransport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)


async def test_datagrams_count_too_and_a_used_up_quota_ends_the_association(
    start_proxy: ProxyFactory, user_store: SqlUserStore
) -> None:
    await accounts.set_limits(user_store, ALICE, quota=(20_000, "day"))
    loop = asyncio.get_running_loop()
    echo, _ = await loop.create_datagram_endpoint(_UdpEcho, local_addr=("127.0.0.1", 0))
    echo_port = echo.get_extra_info("sockname")[1]
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        async with start_proxy() as proxy, raw_connection(proxy.port) as (reader, writer):
            await login(reader, writer)
            writer.write(request("0.0.0.0", 0, UDP_ASSOCIATE))
            reply = await read_reply(reader)
            assert reply.reply == 0x00
            client.bind(("127.0.0.1", 0))
            client.settimeout(WAIT_SECONDS)
            header = b"\x00\x00\x00\x01" + socket.inet_aton("127.0.0.1") + echo_port.to_bytes(2)
            # 2 x 1,000 bytes per round trip: the quota is used up after 10.
            for _ in range(12):
                client.sendto(header + b"u" * 1000, (reply.host, reply.port))
                await asyncio.to_thread(client.recv, 65535)
            # The control connection ends, and with it the association.
            assert await closed_within(reader, 2.0) < 2.0
    finally:
        client.close()
        echo.close()
