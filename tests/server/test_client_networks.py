"""Source binding: a user with client networks logs in only from them — the real client behind a
PROXY header — and from elsewhere fails exactly as a wrong password does (same reply, same
argon2 verification, same throttling), audited as wrong_network."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from e2e import (
    ALICE,
    ALICE_PASSWORD,
    USERNAME_PASSWORD,
    WAIT_SECONDS,
    EchoServer,
    ProxyFactory,
    credentials,
    greeting,
    read_exactly,
    read_reply,
    read_until_closed,
    request,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.auth import accounts
from socksauth.auth.authenticator import Authenticator, LoginRecorder
from socksauth.auth.cache import VerificationCache
from socksauth.auth.throttle import LoginThrottle, ThrottleSettings
from socksauth.store.audit import SqlAuditStore
from socksauth.store.interfaces import AuditEntry, AuditQuery, SortOrder
from socksauth.store.users import SqlUserStore

LOAD_BALANCER = (ipaddress.ip_network("127.0.0.1/32"),)
CLIENT, CLIENT_PORT = "203.0.113.7", 40123
UNTHROTTLED = LoginThrottle(ThrottleSettings(enabled=False))


def v1_header(source: str, source_port: int) -> bytes:
    return f"PROXY TCP4 {source} 127.0.0.1 {source_port} 1080\r\n".encode()


@contextlib.asynccontextmanager
async def connection_from(
    port: int, source: str = "127.0.0.1"
) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    async with asyncio.timeout(WAIT_SECONDS):
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def login_status(
    port: int, *, source: str = "127.0.0.1", header: bytes = b"", password: str = ALICE_PASSWORD
) -> int:
    """RFC 1929 STATUS for alice (0: success); after a failure the proxy closes."""
    async with connection_from(port, source) as (reader, writer):
        writer.write(header + greeting(USERNAME_PASSWORD))
        assert await read_exactly(reader, 2) == b"\x05\x02"
        writer.write(credentials(ALICE, password))
        answer = await read_exactly(reader, 2)
        if answer[1] != 0:
            assert await read_until_closed(reader) == b""
        return answer[1]


async def audit_outcomes(engine: AsyncEngine) -> Sequence[AuditEntry]:
    return await SqlAuditStore(engine).find_entries(
        AuditQuery(limit=None, order=SortOrder.OLDEST_FIRST)
    )


async def test_behind_the_proxy_protocol_the_real_client_address_decides(
    start_proxy: ProxyFactory,
    user_store: SqlUserStore,
    echo_server: EchoServer,
    engine: AsyncEngine,
) -> None:
    await accounts.set_limits(user_store, ALICE, client_networks=["10.1.0.0/16"])
    header = v1_header(CLIENT, CLIENT_PORT)
    async with start_proxy(proxy_protocol_networks=LOAD_BALANCER) as proxy:
        # The load balancer itself is 127.0.0.1, in no network of alice's either way.
        assert await login_status(proxy.port, header=header) == 0x01
        await accounts.set_limits(
            user_store, ALICE, client_networks=["10.1.0.0/16", "203.0.113.0/24"]
        )
        await proxy.caught_up()
        async with connection_from(proxy.port) as (reader, writer):
            writer.write(header + greeting(USERNAME_PASSWORD))
            assert await read_exactly(reader, 2) == b"\x05\x02"
            writer.write(credentials(ALICE, ALICE_PASSWORD))
            assert await read_exactly(reader, 2) == b"\x01\x00"
            writer.write(request(echo_server.host, echo_server.port))
            assert (await read_reply(reader)).reply == 0x00
    entries = await audit_outcomes(engine)
    first = entries[0]
    assert (first.outcome, first.client_host, first.reply) == ("wrong_network", CLIENT, None)
    assert (entries[1].client_host, entries[1].reply, len(entries)) == (CLIENT, 0, 2)


async def test_without_a_header_the_peer_decides_and_a_wrong_password_stays_auth_failed(
    start_proxy: ProxyFactory, user_store: SqlUserStore, engine: AsyncEngine
) -> None:
    await accounts.set_limits(user_store, ALICE, client_networks=["127.0.0.2/32"])
    async with start_proxy() as proxy:
        assert await login_status(proxy.port, source="127.0.0.2") == 0
        assert await login_status(proxy.port, source="127.0.0.3") == 0x01
        assert await login_status(proxy.port, source="127.0.0.3", password="nope-0000") == 0x01
        # Clearing the networks lets alice in from anywhere again.
        await accounts.set_limits(user_store, ALICE, client_networks=[])
        await proxy.caught_up()
        assert await login_status(proxy.port, source="127.0.0.3") == 0
    outcomes = [(e.client_host, e.outcome) for e in await audit_outcomes(engine)]
    assert outcomes == [
        ("127.0.0.2", "client_gone"),
        ("127.0.0.3", "wrong_network"),
        ("127.0.0.3", "auth_failed"),
        ("127.0.0.3", "client_gone"),
    ]


async def test_a_login_from_elsewhere_costs_an_argon2_verification_like_a_wrong_password(
    engine: AsyncEngine,
) -> None:
    store = SqlUserStore(engine)
    await accounts.add_user(store, "carol", "carol-Secret-77")
    await accounts.set_limits(store, "carol", client_networks=["10.9.0.0/16"])
    executor = ThreadPoolExecutor(max_workers=1)
    cache = VerificationCache()
    try:
        async with LoginRecorder(store, interval_seconds=3600) as logins:
            auth = Authenticator(store, executor, logins, cache, throttle=UNTHROTTLED)
            await auth.start()
            # Right password from its network: verified once, then answered from the cache.
            assert (await auth.login("carol", "carol-Secret-77", "10.9.1.1")).user is not None
            assert (await auth.login("carol", "carol-Secret-77", "10.9.1.1")).user is not None
            assert cache.hits == 1

            async def took(password: str, client: str) -> float:
                started = time.perf_counter()
                login = await auth.login("carol", password, client)
                assert login.user is None
                return time.perf_counter() - started

            elsewhere, wrong = [], []
            for _ in range(7):  # interleaved: a busy host slows both alike
                elsewhere.append(await took("carol-Secret-77", "192.0.2.1"))
                wrong.append(await took("carol-Wrong-77", "10.9.1.1"))
            # Never the cache's microseconds: a full verification each time, as for a wrong
            # password (same hash, same parameters). The fastest of each is the cost itself,
            # least disturbed by other load on the machine.
            assert cache.hits == 1
            assert min(elsewhere) > 0.002
            ratio = min(elsewhere) / min(wrong)
            assert 0.5 < ratio < 2.0, (elsewhere, wrong)
            login = await auth.login("carol", "carol-Secret-77", "192.0.2.1")
            assert login.wrong_network
            assert not (await auth.login("carol", "carol-Wrong-77", "192.0.2.1")).wrong_network
    finally:
        executor.shutdown(wait=True)
