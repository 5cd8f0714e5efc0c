"""LoginThrottle: failed logins slow down, then lock out, per client address and per username.

Three counters of recent failures, each forgotten after ``window_seconds`` without a failure:

- per client address (IPv6 by /64, which one host usually owns whole): an address that keeps
  failing, whatever names it tries, first waits longer before each attempt, then is locked out
  for ``lockout_seconds``;
- per (username, client address): the same, with a lower lockout threshold, so one address
  cannot spend its whole allowance on one account;
- per username, across addresses: when a name collects ``user_alert_failures`` it is under
  attack, and from then on every address that has itself failed for that name is locked out
  for it. An address with no failure for the name is not affected, so the account's owner
  logging in from their usual address is never locked out by someone else guessing the name,
  while a botnet gets about one guess per address per window instead of unlimited ones.

Failures count when they happen, not when attempts start: a browser that opens thirty
connections at once with the right password must not lock its own address out. A burst of
wrong passwords in parallel therefore overshoots by the attempts in flight; the cap on
unauthenticated connections per address (server/limits.py) bounds that overshoot. A success
clears its (username, address) counter but not the address counter: an attacker holding one
valid account cannot wash an address clean between guesses at another.

A locked-out attempt is answered as a wrong password without verifying it (saving the 19 MiB
and the CPU of argon2) and does not count again, so a lockout ends on time. Memory is bounded:
each table keeps its ``max_entries`` most recently failed keys.
"""

from __future__ import annotations

import ipaddress
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from socksauth.errors import ConfigError


@dataclass(frozen=True, slots=True, kw_only=True)
class ThrottleSettings:
    """Thresholds and times of the login throttle; the defaults suit an Internet-facing proxy."""

    # Failures from an address, or for a name from an address, before attempts are delayed.
    free_failures: int = 3
    # The first delay, doubled for each further failure, up to max_delay_seconds.
    base_delay_seconds: float = 0.5
    max_delay_seconds: float = 8.0
    address_lockout_failures: int = 30
    pair_lockout_failures: int = 10
    user_alert_failures: int = 20
    lockout_seconds: float = 900.0
    window_seconds: float = 900.0
    max_entries: int = 100_000

    def __post_init__(self) -> None:
        for name in (
            "free_failures",
            "address_lockout_failures",
            "pair_lockout_failures",
            "user_alert_failures",
            "max_entries",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"login throttle {name}: must be at least 1")
        for name in ("lockout_seconds", "window_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"login throttle {name}: must be a positive number of seconds")
        if not 0 <= self.base_delay_seconds <= self.max_delay_seconds:
            raise ConfigError("login throttle: need 0 <= base delay <= max delay")


@dataclass(frozen=True, slots=True)
class Admission:
    """What to do with one login attempt: wait ``delay_seconds`` first, or refuse it."""

    delay_seconds: float = 0.0
    locked: bool = False


ADMIT = Admission()
LOCKED = Admission(locked=True)


@dataclass(slots=True)
class _Failures:
    count: int = 0
    last_at: float = 0.0
    locked_until: float | None = None


class _Table:
    """Failure counters by key, forgetting quiet keys and the least recently failed ones."""

    def __init__(self, settings: ThrottleSettings) -> None:
        self._settings = settings
        self._entries: OrderedDict[object, _Failures] = OrderedDict()

    def get(self, key: object, now: float) -> _Failures | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.locked_until is not None:
            if now < entry.locked_until:
                return entry
            # The lockout is over: start afresh rather than one failure from the next one.
            del self._entries[key]
            return None
        if now - entry.last_at >= self._settings.window_seconds:
            del self._entries[key]
            return None
        return entry

    def add(self, key: object, now: float, lockout_at: int | None) -> None:
        entry = self.get(key, now)
        if entry is None:
            entry = self._entries[key] = _Failures()
        else:
            self._entries.move_to_end(key)
        entry.count += 1
        entry.last_at = now
        if lockout_at is not None and entry.count >= lockout_at and entry.locked_until is None:
            entry.locked_until = now + self._settings.lockout_seconds
        while len(self._entries) > self._settings.max_entries:
            self._entries.popitem(last=False)

    def clear(self, key: object) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


def address_key(host: str) -> str:
    """The throttled unit for a client address: IPv4 as is, IPv6 by its /64 prefix."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


class LoginThrottle:
    """Decides, per attempt, whether to verify a password now, later, or not at all.

    Use: ``admit()`` before verifying; then ``failed()`` or ``succeeded()``. Not
    thread-safe; the event loop calls it.
    """

    def __init__(
        self,
        settings: ThrottleSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings if settings is not None else ThrottleSettings()
        self._clock = clock
        self._addresses = _Table(self.settings)
        self._pairs = _Table(self.settings)
        self._users = _Table(self.settings)

    def admit(self, client_host: str, username: str) -> Admission:
        """Whether an attempt for ``username`` from ``client_host`` may be verified, and after
        how long."""
        now = self._clock()
        address = address_key(client_host)
        pair = (username, address)
        by_address = self._addresses.get(address, now)
        by_pair = self._pairs.get(pair, now)
        by_user = self._users.get(username, now)
        if by_address is not None and by_address.locked_until is not None:
            return LOCKED
        if by_pair is not None and by_pair.locked_until is not None:
            return LOCKED
        if (
            by_user is not None
            and by_user.count >= self.settings.user_alert_failures
            and by_pair is not None
            and by_pair.count > 0
        ):
            return LOCKED
        failures = max(
            by_address.count if by_address is not None else 0,
            by_pair.count if by_pair is not None else 0,
        )
        return Admission(delay_seconds=self._delay(failures))

    def failed(self, client_host: str, username: str) -> None:
        """A wrong password, an unknown or a disabled user: count it everywhere."""
        now = self._clock()
        address = address_key(client_host)
        self._addresses.add(address, now, self.settings.address_lockout_failures)
        self._pairs.add((username, address), now, self.settings.pair_lockout_failures)
        self._users.add(username, now, None)

    def succeeded(self, client_host: str, username: str) -> None:
        """The right password: forget this address's failures for this name (only)."""
        self._pairs.clear((username, address_key(client_host)))

    def _delay(self, failures: int) -> float:
        over = failures - self.settings.free_failures
        if over < 0:
            return 0.0
        return min(
            self.settings.base_delay_seconds * 2.0 ** min(over, 62),
            self.settings.max_delay_seconds,
        )

    @property
    def tracked(self) -> tuple[int, int, int]:
        """How many addresses, (username, address) pairs and usernames are remembered."""
        return len(self._addresses), len(self._pairs), len(self._users)
