"""Revocation on the next connection: once `user disable|delete|passwd|set --expires` has
returned, the very next login is decided on the new state (SQLite: a stat per login;
PostgreSQL: the notification), while warm logins still make no query."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from e2e import (
    ALICE,
    ALICE_PASSWORD,
    ProxyFactory,
    credentials,
    greeting,
    raw_connection,
    read_exactly,
)

from socksauth.auth import accounts

USERNAME_PASSWORD = 0x02
ROUNDS = 100


async def login_status(port: int, user: str = ALICE, password: str = ALICE_PASSWORD) -> int:
    """RFC 1929's STATUS for one login (0: success)."""
    async with raw_connection(port) as (reader, writer):
        writer.write(greeting(USERNAME_PASSWORD) + credentials(user, password))
        answer = await read_exactly(reader, 4)
    assert answer[:3] == b"\x05\x02\x01"
    return answer[3]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_a_disabled_user_is_refused_at_the_very_next_login_100_times_in_a_row(
    start_proxy: ProxyFactory,
) -> None:
    # The throttle would lock alice out of 127.0.0.1 after ten refusals: not under test here.
    async with start_proxy(login_throttle=False) as proxy:
        store = proxy.store
        assert await login_status(proxy.port) == 0
        refused = 0
        started = time.monotonic()
        for _ in range(ROUNDS):
            await accounts.disable(store, ALICE)
            refused += await login_status(proxy.port) != 0
            await accounts.enable(store, ALICE)
            assert await login_status(proxy.port) == 0  # and back in at once
        assert refused == ROUNDS
        assert time.monotonic() - started < 40


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
async def test_on_postgresql_a_disable_holds_on_the_node_within_milliseconds(
    start_proxy: ProxyFactory,
) -> None:
    """The notification's bound: from `user disable` returning to the first refused login,
    logging in again and again meanwhile (warm logins: no argon2, no query)."""
    async with start_proxy(login_throttle=False) as proxy:
        store = proxy.store
        lags = []
        for _ in range(20):
            await accounts.enable(store, ALICE)
            await proxy.caught_up()
            assert await login_status(proxy.port) == 0
            await accounts.disable(store, ALICE)
            disabled_at = attempt_at = time.monotonic()
            # The lag: until the start of the first attempt that is refused (a refusal
            # itself costs a dummy argon2 verification, not part of the propagation).
            while await login_status(proxy.port) == 0:
                assert time.monotonic() - disabled_at < 2.0
                attempt_at = time.monotonic()
            lags.append(attempt_at - disabled_at)
        lags.sort()
        print(f"disable -> refused: median {lags[10] * 1000:.1f} ms, max {lags[-1] * 1000:.1f} ms")
        assert lags[-1] < 0.1, lags


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_delete_passwd_and_expiry_hold_from_the_next_login(
    start_proxy: ProxyFactory,
) -> None:
    async with start_proxy(login_throttle=False) as proxy:
        store = proxy.store
        for _ in range(5):
            assert await login_status(proxy.port) == 0
            await accounts.change_password(store, ALICE, "a-New-passw0rd-17")
            assert await login_status(proxy.port) != 0
            assert await login_status(proxy.port, password="a-New-passw0rd-17") == 0
            await accounts.change_password(store, ALICE, ALICE_PASSWORD)
            await accounts.set_limits(
                store, ALICE, expires_at=datetime.now(UTC) - timedelta(seconds=1)
            )
            assert await login_status(proxy.port) != 0
            await accounts.set_limits(store, ALICE, expires_at=None)
        assert await login_status(proxy.port) == 0
        await accounts.delete(store, ALICE)
        assert await login_status(proxy.port) != 0

