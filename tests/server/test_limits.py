"""Admission counting and the token bucket, without I/O."""

from __future__ import annotations

import pytest

from socksauth.errors import ConfigError
from socksauth.server.limits import (
    ConnectionCaps,
    ConnectionLimits,
    Refusal,
    TokenBucket,
    UserConnections,
    format_rate,
    parse_rate,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_total_connections_are_capped_and_released() -> None:
    limits = ConnectionLimits(
        ConnectionCaps(
            max_connections=3, max_unauthenticated=None, max_unauthenticated_per_address=None
        )
    )
    slots = [limits.admit("192.0.2.1") for _ in range(3)]
    with pytest.raises(Refusal, match="max_connections"):
        limits.admit("192.0.2.2")
    slots[0].release()
    slots[0].release()  # idempotent
    limits.admit("192.0.2.2")
    assert limits.connections == 3


def test_clients_beyond_the_handshake_caps_wait_and_start_as_slots_free() -> None:
    limits = ConnectionLimits(
        ConnectionCaps(
            max_connections=100, max_unauthenticated=5, max_unauthenticated_per_address=2
        )
    )
    first = limits.admit("192.0.2.1")
    limits.admit("192.0.2.1")
    third = limits.admit("192.0.2.1")
    assert (first.started, third.started) == (True, False)
    started: list[str] = []
    third.when_started(lambda: started.append("third"))
    # Once authenticated a client no longer counts against its address: the waiting one starts.
    first.leave_handshake()
    first.leave_handshake()  # idempotent
    assert third.started and started == ["third"]
    # All three still count as connections.
    assert (limits.connections, limits.unauthenticated, limits.waiting) == (3, 2, 0)
    others = [limits.admit(f"192.0.2.{n}") for n in (2, 3, 4)]
    assert all(slot.started for slot in others)
    # The total cap: a fresh address waits too, and starts when any handshake ends.
    fifth = limits.admit("192.0.2.5")
    assert not fifth.started and limits.waiting == 1
    others[0].release()
    assert fifth.started and limits.unauthenticated == 5


def test_free_slots_go_to_waiting_addresses_in_turn() -> None:
    limits = ConnectionLimits(
        ConnectionCaps(
            max_connections=None, max_unauthenticated=2, max_unauthenticated_per_address=None
        )
    )
    running = [limits.admit("192.0.2.1"), limits.admit("192.0.2.1")]
    flood = [limits.admit("192.0.2.1") for _ in range(50)]
    late = limits.admit("198.51.100.7")
    order: list[str] = []
    for index, slot in enumerate(flood):
        slot.when_started(lambda index=index: order.append(f"flood{index}"))
    late.when_started(lambda: order.append("late"))
    # The flood was first, but the other address gets the second free slot, not the 51st.
    running[0].release()
    running[1].release()
    assert order == ["flood0", "late"]


def test_a_client_that_leaves_while_waiting_is_counted_out_and_skipped() -> None:
    limits = ConnectionLimits(
        ConnectionCaps(
            max_connections=10, max_unauthenticated=None, max_unauthenticated_per_address=1
        )
    )
    running = limits.admit("192.0.2.1")
    gone = limits.admit("192.0.2.1")
    gone.release()
    assert (limits.connections, limits.waiting) == (1, 0)
    running.release()
    # Nobody is in the handshake now: a new client starts at once, not behind the gone one.
    assert limits.admit("192.0.2.1").started
    assert (limits.connections, limits.unauthenticated, limits.waiting) == (1, 1, 0)


def test_releasing_an_unauthenticated_slot_frees_both_counts() -> None:
    limits = ConnectionLimits(ConnectionCaps())
    slots = [limits.admit(f"2001:db8::{index}") for index in range(1, 4)]
    assert limits.addresses_in_handshake == 1  # one /64
    for slot in slots:
        slot.release()
    assert (limits.connections, limits.unauthenticated, limits.addresses_in_handshake) == (0, 0, 0)


def test_caps_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="max_connections"):
        ConnectionCaps(max_connections=0)


async def test_per_user_connections_are_counted_with_leases() -> None:
    users = UserConnections()
    leases = [await users.acquire("alice", 2), await users.acquire("alice", 2)]
    assert all(lease is not None for lease in leases)
    assert await users.acquire("alice", 2) is None
    assert await users.acquire("bob", 2) is not None
    assert await users.acquire("carol", None) is not None
    lease = leases[0]
    assert lease is not None
    with lease:
        pass
    lease.release()  # idempotent
    assert users.count("alice") == 1
    assert await users.acquire("alice", 2) is not None


def test_the_bucket_allows_its_burst_then_charges_debt_by_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1000, burst_bytes=500, clock=clock)
    assert bucket.consume(400) == 0.0
    # A chunk bigger than what is left is charged whole: 300 bytes of debt = 0.3 s.
    assert bucket.consume(400) == pytest.approx(0.3)
    clock.now += 0.3
    assert bucket.tokens == pytest.approx(0.0, abs=1e-6)
    clock.now += 10
    assert bucket.tokens == 500  # never more than the burst


def test_the_average_rate_holds_whatever_the_chunk_sizes() -> None:
    clock = FakeClock()
    rate = 10 * 1024 * 1024
    bucket = TokenBucket(rate, burst_bytes=0, clock=clock)
    sent = 0
    for size in [1, 65536, 4096, 262144, 17, 100_000] * 50:
        clock.now += bucket.consume(size)  # the relay waits exactly as long as told
        sent += size
    assert clock.now - 50.0 == pytest.approx(sent / rate)


def test_the_default_burst_is_one_second_of_rate() -> None:
    assert TokenBucket(2048).burst_bytes == 2048


@pytest.mark.parametrize("rate", [0, -5])
def test_a_rate_must_be_positive(rate: float) -> None:
    with pytest.raises(ConfigError, match="bandwidth"):
        TokenBucket(rate)


@pytest.mark.parametrize(
    ("rate", "text"),
    [(10 * 1024**2, "10MiB/s"), (500_000, "500kB/s"), (999, "999B/s"), (3 * 1000**3, "3GB/s")],
)
def test_a_rate_is_shown_in_the_form_it_is_read_back(rate: int, text: str) -> None:
    assert format_rate(rate) == text
    assert parse_rate(format_rate(rate)) == rate
