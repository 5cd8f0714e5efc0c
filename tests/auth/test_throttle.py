"""LoginThrottle with a fake clock: delays grow, lockouts start and end, bystanders pass."""

from __future__ import annotations

import pytest

from socksauth.auth.throttle import (
    ADMIT,
    LOCKED,
    LoginThrottle,
    ThrottleSettings,
    address_key,
)
from socksauth.errors import ConfigError

ATTACKER, USER_HOME, OTHER = "203.0.113.9", "198.51.100.7", "192.0.2.44"
SETTINGS = ThrottleSettings(
    free_failures=3,
    base_delay_seconds=0.5,
    max_delay_seconds=4.0,
    address_lockout_failures=12,
    pair_lockout_failures=6,
    user_alert_failures=8,
    lockout_seconds=300.0,
    window_seconds=600.0,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def throttle(clock: FakeClock) -> LoginThrottle:
    return LoginThrottle(SETTINGS, clock)


def fail(throttle: LoginThrottle, host: str, username: str, times: int = 1) -> None:
    for _ in range(times):
        admission = throttle.admit(host, username)
        assert not admission.locked
        throttle.failed(host, username)


def test_the_first_failures_are_free_then_the_delay_doubles_up_to_the_cap(
    throttle: LoginThrottle,
) -> None:
    delays = []
    for _ in range(6):
        admission = throttle.admit(ATTACKER, "alice")
        delays.append(admission.delay_seconds)
        throttle.failed(ATTACKER, "alice")
    assert delays == [0.0, 0.0, 0.0, 0.5, 1.0, 2.0]
    fail(throttle, ATTACKER, "bob", 3)  # the address counter keeps growing across names
    assert throttle.admit(ATTACKER, "carol").delay_seconds == 4.0


def test_one_name_from_one_address_locks_out_before_the_address_does(
    throttle: LoginThrottle,
) -> None:
    fail(throttle, ATTACKER, "alice", SETTINGS.pair_lockout_failures)
    assert throttle.admit(ATTACKER, "alice") is LOCKED
    assert not throttle.admit(ATTACKER, "bob").locked


def test_an_address_trying_many_names_is_locked_out_for_all(throttle: LoginThrottle) -> None:
    for index in range(SETTINGS.address_lockout_failures):
        fail(throttle, ATTACKER, f"user{index}")
    assert throttle.admit(ATTACKER, "someone-new") is LOCKED
    assert throttle.admit(OTHER, "someone-new") == ADMIT


def test_the_lockout_ends_on_time_and_locked_attempts_do_not_extend_it(
    throttle: LoginThrottle, clock: FakeClock
) -> None:
    fail(throttle, ATTACKER, "alice", SETTINGS.pair_lockout_failures)
    for _ in range(100):
        clock.now += 2.9
        assert throttle.admit(ATTACKER, "alice") is LOCKED
    clock.now += SETTINGS.lockout_seconds - 290 + 1
    admission = throttle.admit(ATTACKER, "alice")
    assert not admission.locked
    # The address's own failures are remembered for the longer window: still slowed down.
    assert admission.delay_seconds > 0


def test_failures_are_forgotten_after_a_quiet_window(
    throttle: LoginThrottle, clock: FakeClock
) -> None:
    fail(throttle, ATTACKER, "alice", 5)
    assert throttle.admit(ATTACKER, "alice").delay_seconds > 0
    clock.now += SETTINGS.window_seconds
    assert throttle.admit(ATTACKER, "alice") == ADMIT


def test_the_owner_from_a_clean_address_is_not_locked_out_by_a_distributed_attack(
    throttle: LoginThrottle,
) -> None:
    # Many addresses, a few guesses each: none reaches a per-address threshold, but the name
    # is now under attack.
    for index in range(SETTINGS.user_alert_failures // 2):
        fail(throttle, f"203.0.113.{index}", "alice", 2)
    # Every attacking address that failed for alice is now locked out for her ...
    assert throttle.admit("203.0.113.3", "alice") is LOCKED
    # ... a fresh attacking address gets one guess, then it is locked out too ...
    fail(throttle, "203.0.113.200", "alice")
    assert throttle.admit("203.0.113.200", "alice") is LOCKED
    # ... and the owner, whose address never failed, logs in without delay.
    assert throttle.admit(USER_HOME, "alice") == ADMIT
    throttle.succeeded(USER_HOME, "alice")
    # Other names from the attacking addresses are not affected by alice's alert.
    assert not throttle.admit("203.0.113.3", "bob").locked


def test_the_owner_is_not_locked_out_by_one_address_hammering_their_name(
    throttle: LoginThrottle,
) -> None:
    fail(throttle, ATTACKER, "alice", SETTINGS.pair_lockout_failures)
    assert throttle.admit(ATTACKER, "alice") is LOCKED
    assert throttle.admit(USER_HOME, "alice") == ADMIT


def test_a_success_clears_the_pair_but_not_the_address(throttle: LoginThrottle) -> None:
    fail(throttle, ATTACKER, "victim", SETTINGS.pair_lockout_failures - 1)
    throttle.admit(ATTACKER, "mine")
    throttle.succeeded(ATTACKER, "mine")
    # Logging in to an account of one's own does not reset the guesses at another ...
    fail(throttle, ATTACKER, "victim")
    assert throttle.admit(ATTACKER, "victim") is LOCKED
    # ... while a user who mistyped and then got it right starts afresh for that name.
    fail(throttle, USER_HOME, "alice", 2)
    throttle.admit(USER_HOME, "alice")
    throttle.succeeded(USER_HOME, "alice")
    fail(throttle, USER_HOME, "alice", SETTINGS.pair_lockout_failures - 1)
    assert not throttle.admit(USER_HOME, "alice").locked


def test_ipv6_clients_are_counted_by_their_slash_64() -> None:
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:2::1") != address_key("2001:db8:1:3::1")
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    assert address_key("192.0.2.1") == "192.0.2.1"
    throttle = LoginThrottle(SETTINGS)
    for index in range(SETTINGS.address_lockout_failures):
        fail(throttle, f"2001:db8:1:2::{index + 1:x}", f"user{index}")
    assert throttle.admit("2001:db8:1:2::abcd", "new") is LOCKED


def test_memory_is_bounded_by_max_entries(clock: FakeClock) -> None:
    throttle = LoginThrottle(ThrottleSettings(max_entries=100), clock)
    for index in range(1000):
        throttle.admit(f"10.0.{index // 256}.{index % 256}", f"user{index}")
        throttle.failed(f"10.0.{index // 256}.{index % 256}", f"user{index}")
    assert throttle.tracked == (100, 100, 100)


@pytest.mark.parametrize(
    "overrides",
    [
        {"free_failures": 0},
        {"lockout_seconds": 0},
        {"window_seconds": -1},
        {"base_delay_seconds": 5, "max_delay_seconds": 1},
        {"max_entries": 0},
    ],
)
def test_bad_settings_are_refused(overrides: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="login throttle"):
        ThrottleSettings(**overrides)  # type: ignore[arg-type]
