"""The verifier with real argon2 in real threads: turns in rotation between addresses, one
verification for identical attempts, nothing verified for attempts that gave up or got locked."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from socksauth.auth import passwords
from socksauth.auth.throttle import ADMIT, LOCKED, Admission
from socksauth.auth.verifier import FairTurns, NotVerified, Verifier

RIGHT = "correct horse"


class CountingExecutor(ThreadPoolExecutor):
    """A real thread pool that counts the verifications submitted to it."""

    def __init__(self, threads: int) -> None:
        super().__init__(max_workers=threads)
        self.submitted = 0
        self._lock = threading.Lock()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        with self._lock:
            self.submitted += 1
        return super().submit(fn, *args, **kwargs)


@pytest.fixture(scope="module")
def stored_hash() -> str:
    return passwords.hash_password(RIGHT)


@pytest.fixture
def executor() -> Iterator[CountingExecutor]:
    pool = CountingExecutor(threads=1)
    yield pool
    pool.shutdown(wait=True)


def admit_all(client_host: str, username: str) -> Admission:
    return ADMIT


async def test_another_address_waits_one_turn_not_behind_a_flood(
    executor: CountingExecutor, stored_hash: str
) -> None:
    verifier = Verifier(executor, threads=1, admit=admit_all)
    finished: list[str] = []

    async def attempt(host: str, password: str) -> None:
        await verifier.verify(password, stored_hash, host, "alice")
        finished.append(host)

    # One address queues 12 distinct wrong guesses; then another address one login.
    flood = [asyncio.ensure_future(attempt("127.0.0.1", f"guess {n}")) for n in range(12)]
    await asyncio.sleep(0)
    other = asyncio.ensure_future(attempt("127.0.0.2", RIGHT))
    await asyncio.gather(other, *flood)
    # Served in rotation: the flood's running verification and, at most, its next one go
    # first; in arrival order the other address would have been 13th.
    assert finished.index("127.0.0.2") <= 2, finished
    assert executor.submitted == 13


async def test_identical_attempts_in_flight_share_one_verification(
    executor: CountingExecutor, stored_hash: str
) -> None:
    verifier = Verifier(executor, threads=1, admit=admit_all)
    results = await asyncio.gather(
        *(verifier.verify(RIGHT, stored_hash, "127.0.0.1", "alice") for _ in range(20))
    )
    assert results == [True] * 20
    assert executor.submitted == 1
    # A wrong password is not the same attempt, nor is the same one from another address.
    mixed = await asyncio.gather(
        verifier.verify(RIGHT, stored_hash, "127.0.0.1", "alice"),
        verifier.verify("wrong", stored_hash, "127.0.0.1", "alice"),
        verifier.verify(RIGHT, stored_hash, "127.0.0.3", "alice"),
    )
    assert list(mixed) == [True, False, True]
    assert executor.submitted == 4


async def test_one_waiter_giving_up_does_not_cancel_the_others(
    executor: CountingExecutor, stored_hash: str
) -> None:
    verifier = Verifier(executor, threads=1, admit=admit_all)
    impatient = asyncio.ensure_future(verifier.verify(RIGHT, stored_hash, "127.0.0.1", "alice"))
    patient = asyncio.ensure_future(verifier.verify(RIGHT, stored_hash, "127.0.0.1", "alice"))
    await asyncio.sleep(0)
    impatient.cancel()
    assert await patient is True
    assert impatient.cancelled()


async def test_attempts_that_all_gave_up_while_queued_are_never_verified(
    executor: CountingExecutor, stored_hash: str
) -> None:
    verifier = Verifier(executor, threads=1, admit=admit_all)
    running = asyncio.ensure_future(verifier.verify("first", stored_hash, "127.0.0.1", "alice"))
    queued = [
        asyncio.ensure_future(verifier.verify(f"gone {n}", stored_hash, "127.0.0.1", "bob"))
        for n in range(5)
    ]
    # A few loop iterations: every attempt has queued, the first holds the one turn (its
    # verification takes milliseconds of the thread).
    for _ in range(3):
        await asyncio.sleep(0)
    assert verifier.waiting == 5
    for task in queued:
        task.cancel()
    await asyncio.gather(*queued, return_exceptions=True)
    assert await running is False
    assert verifier.waiting == 0
    # The turns given up went to nobody: the next attempt is verified at once, and the
    # queued ones never reached the thread pool.
    assert await asyncio.wait_for(verifier.verify(RIGHT, stored_hash, "127.0.0.2", "a"), 5)
    assert executor.submitted == 2


async def test_an_attempt_whose_pair_was_locked_while_it_waited_is_not_verified(
    executor: CountingExecutor, stored_hash: str
) -> None:
    locked_pairs: set[tuple[str, str]] = set()

    def admit(host: str, username: str) -> Admission:
        return LOCKED if (host, username) in locked_pairs else ADMIT

    verifier = Verifier(executor, threads=1, admit=admit)
    first = asyncio.ensure_future(verifier.verify("guess 1", stored_hash, "127.0.0.1", "alice"))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(verifier.verify("guess 2", stored_hash, "127.0.0.1", "alice"))
    await asyncio.sleep(0)
    locked_pairs.add(("127.0.0.1", "alice"))  # as the throttle would after the first failure
    assert await first is False
    assert await second is NotVerified.LOCKED
    assert executor.submitted == 1


async def test_fair_turns_pass_on_a_turn_given_to_a_waiter_cancelled_at_once() -> None:
    turns = FairTurns(1)
    await turns.acquire("a")
    waiter = asyncio.ensure_future(turns.acquire("b"))
    follower = asyncio.ensure_future(turns.acquire("c"))
    await asyncio.sleep(0)
    turns.release()  # the turn goes to "b" …
    waiter.cancel()  # … which is cancelled before it runs: "c" must get it
    await asyncio.wait_for(follower, 1)
    assert waiter.cancelled()


async def test_an_attempt_that_now_owes_a_longer_delay_is_not_verified(
    executor: CountingExecutor, stored_hash: str
) -> None:
    owed = {"seconds": 0.0}
    verifier = Verifier(
        executor, threads=1, admit=lambda h, u: Admission(delay_seconds=owed["seconds"])
    )
    first = asyncio.ensure_future(verifier.verify("guess 1", stored_hash, "127.0.0.1", "a"))
    await asyncio.sleep(0)
    waited = asyncio.ensure_future(
        verifier.verify("guess 2", stored_hash, "127.0.0.1", "b", delayed_seconds=1.0)
    )
    fresh = asyncio.ensure_future(verifier.verify("guess 3", stored_hash, "127.0.0.1", "c"))
    await asyncio.sleep(0)
    owed["seconds"] = 1.0  # failures ahead raised the delay (a spray from the address)
    assert await first is False
    # The one that already waited that long is verified; the one that waited nothing is not.
    assert await waited is False
    assert await fresh is NotVerified.DELAYED
    assert executor.submitted == 2
