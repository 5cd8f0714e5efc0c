"""The authenticator on a real store: who gets in, rehash at login, equal-cost refusals."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from passlib.hash import argon2
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.auth import accounts, passwords
from socksauth.auth.authenticator import Authenticator, LoginRecorder
from socksauth.auth.cache import VerificationCache
from socksauth.auth.throttle import LoginThrottle, ThrottleSettings
from socksauth.store.users import SqlUserStore

UNTHROTTLED = LoginThrottle(ThrottleSettings(enabled=False))


@pytest.fixture
async def store(engine: AsyncEngine) -> SqlUserStore:
    users = SqlUserStore(engine)
    await accounts.add_user(users, "alice", "correct horse")
    return users


@pytest.fixture
async def authenticator(store: SqlUserStore) -> AsyncIterator[Authenticator]:
    executor = ThreadPoolExecutor(max_workers=2)
    try:
        # A long interval: these tests flush by hand, so what they see is what they flushed.
        async with LoginRecorder(store, interval_seconds=3600) as logins:
            # These tests time and repeat failures on purpose: no throttle delays (its own
            # tests are in test_throttle.py and tests/server/test_access.py).
            auth = Authenticator(store, executor, logins, throttle=UNTHROTTLED)
            await auth.start()
            yield auth
    finally:
        executor.shutdown(wait=True)


async def test_the_right_password_returns_the_user(authenticator: Authenticator) -> None:
    user = await authenticator.authenticate("alice", "correct horse")
    assert user is not None
    assert user.username == "alice"


@pytest.mark.parametrize(
    ("username", "password"),
    [("alice", "wrong"), ("alice", ""), ("mallory", "correct horse"), ("Alice", "correct horse")],
)
async def test_wrong_password_and_unknown_users_are_refused(
    authenticator: Authenticator, username: str, password: str
) -> None:
    assert await authenticator.authenticate(username, password) is None


async def test_a_disabled_user_is_refused_even_with_the_right_password(
    authenticator: Authenticator, store: SqlUserStore
) -> None:
    await accounts.disable(store, "alice")
    assert await authenticator.authenticate("alice", "correct horse") is None
    await accounts.enable(store, "alice")
    assert await authenticator.authenticate("alice", "correct horse") is not None


async def test_a_hash_with_weaker_parameters_is_upgraded_at_login(
    authenticator: Authenticator, store: SqlUserStore
) -> None:
    weak = argon2.using(type="ID", memory_cost=8192, time_cost=1, parallelism=1).hash("old pw")
    await store.set_password_hash("alice", weak)
    assert passwords.needs_rehash(weak)

    assert await authenticator.authenticate("alice", "old pw") is not None

    record = await store.get_user("alice")
    assert record is not None
    assert record.password_hash != weak
    assert not passwords.needs_rehash(record.password_hash)
    assert passwords.verify_password("old pw", record.password_hash)


async def test_a_successful_login_is_recorded_as_last_login_when_flushed(
    store: SqlUserStore,
) -> None:
    executor = ThreadPoolExecutor(max_workers=1)
    try:
        async with LoginRecorder(store, interval_seconds=3600) as logins:
            auth = Authenticator(store, executor, logins)
            assert await auth.authenticate("alice", "correct horse") is not None
            before = await store.get_user("alice")
            assert before is not None and before.last_login_at is None
        # Leaving the recorder flushes what it collected.
        after = await store.get_user("alice")
        assert after is not None and after.last_login_at is not None
    finally:
        executor.shutdown(wait=True)


async def _median_seconds(authenticator: Authenticator, username: str, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        assert await authenticator.authenticate(username, "not the password") is None
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


async def test_an_unknown_user_costs_about_what_a_wrong_password_costs(
    authenticator: Authenticator,
) -> None:
    # Without the dummy verification an unknown user is answered after one indexed SELECT,
    # about 100 times faster than an argon2 verification: a factor of 3 tells the two apart
    # without being sensitive to scheduling noise.
    wrong_password = await _median_seconds(authenticator, "alice", 7)
    unknown_user = await _median_seconds(authenticator, "nobody-by-this-name", 7)
    assert unknown_user > wrong_password / 3
    assert unknown_user < wrong_password * 3


async def test_verification_does_not_block_the_event_loop(authenticator: Authenticator) -> None:
    # A ticker on the loop keeps ticking while four argon2 verifications run in the pool.
    ticks = 0
    stop = asyncio.Event()

    async def tick() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    ticker = asyncio.create_task(tick())
    started = time.perf_counter()
    await asyncio.gather(*(authenticator.authenticate("alice", "wrong") for _ in range(4)))
    elapsed = time.perf_counter() - started
    stop.set()
    await ticker
    # A blocked loop would tick a handful of times; a free one ticks every millisecond or so
    # (every few on a loaded machine: the bound leaves room for that, not for a blocked loop).
    assert ticks >= elapsed / 0.001 / 10


async def test_a_repeated_login_is_answered_from_the_cache_but_a_wrong_password_is_not(
    store: SqlUserStore,
) -> None:
    executor = ThreadPoolExecutor(max_workers=1)
    cache = VerificationCache()
    try:
        async with LoginRecorder(store, interval_seconds=3600) as logins:
            auth = Authenticator(store, executor, logins, cache)
            await auth.start()
            assert await auth.authenticate("alice", "correct horse") is not None
            assert cache.hits == 0
            assert await auth.authenticate("alice", "correct horse") is not None
            assert cache.hits == 1
            started = time.perf_counter()
            assert await auth.authenticate("alice", "correct hors") is None
            wrong_took = time.perf_counter() - started
            # A full argon2 verification, not a cache answer: milliseconds, not microseconds.
            assert wrong_took > 0.002
            assert cache.hits == 1
            # The account state is read on every login, cache or not.
            await accounts.disable(store, "alice")
            assert await auth.authenticate("alice", "correct horse") is None
    finally:
        executor.shutdown(wait=True)


async def test_a_password_change_makes_the_old_password_fail_at_once(
    authenticator: Authenticator, store: SqlUserStore
) -> None:
    assert await authenticator.authenticate("alice", "correct horse") is not None
    await accounts.change_password(store, "alice", "battery staple")
    assert await authenticator.authenticate("alice", "correct horse") is None
    assert await authenticator.authenticate("alice", "battery staple") is not None
