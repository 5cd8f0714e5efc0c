"""LoginThrottle with a fake clock: per-pair delays and lockouts, repeats, familiar
addresses, spraying, exempt networks, clearing."""

from __future__ import annotations

import ipaddress
import logging

import pytest

from socksauth.auth.throttle import (
    ADMIT,
    LOCKED,
    Failure,
    LoginThrottle,
    ThrottleSettings,
    address_key,
)
from socksauth.errors import ConfigError

ATTACKER, USER_HOME, OTHER = "203.0.113.9", "198.51.100.7", "192.0.2.44"
SETTINGS = ThrottleSettings()  # the defaults are the policy under test


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


class Counted:
    """A ThrottleObserver that remembers what it was told."""

    def __init__(self) -> None:
        self.reasons: list[Failure] = []
        self.delays: list[float] = []
        self.lockouts = 0
        self.locked = 0

    def failed(self, reason: Failure) -> None:
        self.reasons.append(reason)

    def delayed(self, seconds: float) -> None:
        self.delays.append(seconds)

    def lockout_started(self) -> None:
        self.lockouts += 1

    def locked_now(self, count: int) -> None:
        self.locked = count

    def store_error(self) -> None:
        pass


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def counted() -> Counted:
    return Counted()


@pytest.fixture
def throttle(clock: FakeClock, counted: Counted) -> LoginThrottle:
    return LoginThrottle(SETTINGS, clock, counted)


def fail(
    throttle: LoginThrottle, host: str, username: str, times: int = 1, prefix: str = "guess"
) -> None:
    """``times`` wrong passwords, each a different one."""
    for index in range(times):
        assert not throttle.admit(host, username).locked
        throttle.failed(host, username, f"{prefix}-{index}-{throttle.tracked}")


def test_three_failures_are_free_then_the_delay_doubles_up_to_4_s(throttle: LoginThrottle) -> None:
    delays = []
    for index in range(9):
        delays.append(throttle.admit(ATTACKER, "alice").delay_seconds)
        throttle.failed(ATTACKER, "alice", f"guess-{index}")
    assert delays == [0.0, 0.0, 0.0, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_bob_from_the_same_address_is_not_slowed_by_alices_failures(
    throttle: LoginThrottle,
) -> None:
    fail(throttle, ATTACKER, "alice", 9)
    assert throttle.admit(ATTACKER, "bob") == ADMIT
    throttle.failed(ATTACKER, "alice", "one more")
    assert throttle.admit(ATTACKER, "alice") is LOCKED
    assert throttle.admit(ATTACKER, "bob") == ADMIT


def test_ten_counted_failures_lock_the_pair_for_60_s_doubling_up_to_900_s(
    throttle: LoginThrottle, clock: FakeClock, counted: Counted, caplog: pytest.LogCaptureFixture
) -> None:
    lockouts = []
    with caplog.at_level(logging.WARNING, "socksauth.throttle"):
        fail(throttle, ATTACKER, "alice", 10)
        for _ in range(6):
            assert throttle.admit(ATTACKER, "alice") is LOCKED
            started = clock.now
            while throttle.admit(ATTACKER, "alice") is LOCKED:
                clock.now += 1
            lockouts.append(clock.now - started)
            # After a lockout: no free failures, so 7 more (delayed) guesses lock it again.
            assert throttle.admit(ATTACKER, "alice").delay_seconds == 0.5
            fail(throttle, ATTACKER, "alice", 7, prefix=f"round-{len(lockouts)}")
    assert lockouts == [60, 120, 240, 480, 900, 900]
    assert counted.lockouts == 7 and counted.locked == 1
    locked_lines = [r.getMessage() for r in caplog.records if "locked for" in r.getMessage()]
    assert len(locked_lines) == 7  # one line per lockout, not per refused attempt
    assert "'alice' from 203.0.113.9 locked for 60 s" in locked_lines[0]


def test_failures_while_locked_do_not_count(throttle: LoginThrottle, clock: FakeClock) -> None:
    fail(throttle, ATTACKER, "alice", 10)
    for index in range(50):  # attempts in flight when the lock started
        throttle.failed(ATTACKER, "alice", f"late-{index}")
    clock.now += 60
    assert throttle.admit(ATTACKER, "alice").delay_seconds == 0.5


def test_counters_decay_after_the_window_and_a_success_resets_the_pair(
    throttle: LoginThrottle, clock: FakeClock
) -> None:
    fail(throttle, ATTACKER, "alice", 6)
    clock.now += SETTINGS.window_seconds
    assert throttle.admit(ATTACKER, "alice") == ADMIT
    fail(throttle, OTHER, "alice", 6)
    throttle.succeeded(OTHER, "alice")
    assert throttle.admit(OTHER, "alice") == ADMIT


def test_repeating_one_of_the_last_three_wrong_passwords_does_not_count(
    throttle: LoginThrottle, counted: Counted
) -> None:
    # A script with a stale password, retrying forever, plus a user cycling two typos.
    for _ in range(200):
        for password in ("stale", "typo-1", "typo-2"):
            assert not throttle.admit(ATTACKER, "alice").locked
            throttle.failed(ATTACKER, "alice", password)
    # Three counted (the free ones): delayed from now on, never locked by the repeats.
    assert throttle.admit(ATTACKER, "alice").delay_seconds == 0.5
    assert counted.reasons.count(Failure.REPEATED_PASSWORD) == 597
    # A fourth password pushes the first out of the three remembered ones.
    fail(throttle, ATTACKER, "alice", 1)
    throttle.failed(ATTACKER, "alice", "stale")
    assert throttle.admit(ATTACKER, "alice").delay_seconds == 2.0


def test_the_remembered_passwords_are_keyed_digests_not_the_passwords(
    throttle: LoginThrottle,
) -> None:
    throttle.failed(ATTACKER, "alice", "hunter2-secret")
    pair = throttle.pair_state("alice", ATTACKER)
    assert pair is not None and len(pair.recent) == 1
    assert b"hunter2" not in pair.recent[0] and len(pair.recent[0]) == 16
    other = LoginThrottle(SETTINGS)
    other.failed(ATTACKER, "alice", "hunter2-secret")
    other_pair = other.pair_state("alice", ATTACKER)
    assert other_pair is not None and other_pair.recent[0] != pair.recent[0]


def test_a_familiar_pair_is_delayed_but_not_locked_until_50_failures_in_a_day(
    throttle: LoginThrottle, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    throttle.succeeded(USER_HOME, "alice")
    clock.now += 29 * 86_400  # still familiar after 29 days
    with caplog.at_level(logging.WARNING, "socksauth.throttle"):
        fail(throttle, USER_HOME, "alice", 50)
        assert throttle.admit(USER_HOME, "alice").delay_seconds == 4.0
        assert not caplog.records
        fail(throttle, USER_HOME, "alice", 1)  # the 51st: loses its standing, warned
        assert "lost its familiar standing" in caplog.text
    assert throttle.admit(USER_HOME, "alice") is LOCKED


def test_familiar_standing_ends_after_30_days(throttle: LoginThrottle, clock: FakeClock) -> None:
    throttle.succeeded(USER_HOME, "alice")
    clock.now += 30 * 86_400 + 1
    fail(throttle, USER_HOME, "alice", 10)
    assert throttle.admit(USER_HOME, "alice") is LOCKED


def test_failures_from_elsewhere_never_lock_the_owner_out_of_a_familiar_address(
    throttle: LoginThrottle,
) -> None:
    throttle.succeeded(USER_HOME, "alice")
    for index in range(50):
        fail(throttle, f"203.0.113.{index + 1}", "alice", 10)
    assert throttle.admit(USER_HOME, "alice") == ADMIT


def test_an_address_failing_for_ten_usernames_is_delayed_as_a_whole(
    throttle: LoginThrottle, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    throttle.succeeded(ATTACKER, "carol")  # carol logs in from there regularly
    for index in range(9):
        fail(throttle, ATTACKER, f"user{index}")
    assert throttle.admit(ATTACKER, "bob") == ADMIT
    with caplog.at_level(logging.WARNING, "socksauth.throttle"):
        fail(throttle, ATTACKER, "user9")
        fail(throttle, ATTACKER, "user9")
    assert [r.getMessage() for r in caplog.records] == [
        f"client {ATTACKER} failed logins for 10 usernames within 900 s: every login from it "
        "is delayed (spraying)"
    ]
    assert throttle.admit(ATTACKER, "bob").delay_seconds == 0.5
    fail(throttle, ATTACKER, "user10")
    fail(throttle, ATTACKER, "user11")
    assert throttle.admit(ATTACKER, "someone-new").delay_seconds == 2.0
    assert throttle.admit(ATTACKER, "carol") == ADMIT  # a familiar pair is not sprayed on
    assert throttle.admit(OTHER, "bob") == ADMIT
    clock.now += SETTINGS.window_seconds
    assert throttle.admit(ATTACKER, "bob") == ADMIT


def test_at_most_four_delayed_attempts_per_address_wait_at_once(
    throttle: LoginThrottle, counted: Counted
) -> None:
    assert [throttle.hold(ATTACKER) for _ in range(5)] == [True, True, True, True, False]
    assert counted.reasons == [Failure.TOO_MANY_DELAYED]
    assert throttle.hold(OTHER)
    throttle.release(ATTACKER)
    assert throttle.hold(ATTACKER)


def test_exempt_networks_are_delayed_at_most(clock: FakeClock) -> None:
    settings = ThrottleSettings(exempt_networks=(ipaddress.ip_network("10.0.0.0/8"),))
    throttle = LoginThrottle(settings, clock)
    fail(throttle, "10.1.2.3", "alice", 100)
    assert throttle.admit("10.1.2.3", "alice").delay_seconds == 4.0
    fail(throttle, ATTACKER, "alice", 10)
    assert throttle.admit(ATTACKER, "alice") is LOCKED


def test_switched_off_it_admits_everything(clock: FakeClock, counted: Counted) -> None:
    throttle = LoginThrottle(ThrottleSettings(enabled=False), clock, counted)
    fail(throttle, ATTACKER, "alice", 100)
    assert throttle.admit(ATTACKER, "alice") == ADMIT
    assert counted.reasons == [Failure.WRONG_PASSWORD] * 100  # still counted in the metrics


def test_clear_lifts_by_user_by_network_or_both(throttle: LoginThrottle) -> None:
    for host in (ATTACKER, OTHER, "2001:db8::1"):
        for name in ("alice", "bob"):
            fail(throttle, host, name, 10)
    assert throttle.clear(username="alice", network=ipaddress.ip_network("203.0.113.0/24")) == 1
    assert throttle.admit(ATTACKER, "alice") == ADMIT
    assert throttle.admit(ATTACKER, "bob") is LOCKED
    assert throttle.clear(network=ipaddress.ip_network("2001:db8::/32")) == 2
    assert throttle.admit("2001:db8::2", "bob") == ADMIT
    assert throttle.clear(username="bob") == 2
    assert {entry.username for entry in throttle.entries()} == {"alice"}
    assert throttle.clear() == 1
    assert list(throttle.entries()) == []


def test_entries_show_who_from_where_until_when_and_how_many(
    throttle: LoginThrottle, clock: FakeClock
) -> None:
    fail(throttle, ATTACKER, "alice", 10)
    fail(throttle, OTHER, "bob", 4)
    entries = {entry.username: entry for entry in throttle.entries()}
    assert entries["alice"].address == ATTACKER
    assert entries["alice"].locked_until == clock.now + 60
    assert entries["bob"].failures == 4 and entries["bob"].locked_until is None
    assert entries["bob"].delay_seconds == 1.0


def test_ipv6_clients_are_counted_by_their_slash_64(throttle: LoginThrottle) -> None:
    assert address_key("2001:db8:1:2::5") == "2001:db8:1:2::/64"
    assert address_key("::ffff:192.0.2.1") == "192.0.2.1"
    fail(throttle, "2001:db8:1:2::5", "alice", 10)
    assert throttle.admit("2001:db8:1:2:ffff::9", "alice") is LOCKED
    assert throttle.admit("2001:db8:1:3::5", "alice") == ADMIT


def test_memory_is_bounded_by_max_entries(clock: FakeClock) -> None:
    throttle = LoginThrottle(ThrottleSettings(max_entries=100), clock)
    for index in range(1000):
        throttle.failed(f"10.0.{index // 250}.{index % 250}", f"user{index}", "x")
    pairs, familiar, addresses = throttle.tracked
    assert pairs <= 100 and familiar == 0 and addresses <= 100


@pytest.mark.parametrize(
    "overrides",
    [
        {"free_failures": 0},
        {"lockout_failures": 0},
        {"lockout_seconds": 0.0},
        {"max_lockout_seconds": 30.0},
        {"delay_seconds": 5.0},
        {"window_seconds": -1.0},
        {"remembered_passwords": 0},
        {"max_delayed_per_address": 0},
    ],
)
def test_bad_settings_are_refused(overrides: dict[str, float]) -> None:
    with pytest.raises(ConfigError, match="login_"):
        ThrottleSettings(**overrides)  # type: ignore[arg-type]
