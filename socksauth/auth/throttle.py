"""LoginThrottle: failed logins are delayed, then locked out, per (username, client address).

The policy (README, "Login throttling"; every number a ``login_*`` setting, ThrottleSettings):

- The unit is the **pair** (username, client address; IPv6 by /64, which one host usually
  owns whole). Bob's logins from Alice's address never pay for Alice's failures.
- A pair's first ``free_failures`` counted failures cost nothing; then each attempt waits
  ``delay_seconds``, doubled per further failure, up to ``max_delay_seconds``; at
  ``lockout_failures`` the pair is **locked** for ``lockout_seconds``, doubled per repeated
  lockout up to ``max_lockout_seconds``. A locked attempt is answered as a wrong password
  without verifying it, and does not count again, so a lockout ends on time. Counters are
  forgotten ``window_seconds`` after the pair's last failure; a success resets the pair.
- A **repeat** of one of the pair's last ``remembered_passwords`` wrong passwords is not
  counted again (Dovecot, Entra): a script with a stale password or a retried typo is
  delayed, never locked. Only a keyed HMAC of each is kept; the key never leaves the
  process (or, shared, the store).
- **Familiar**: a success makes the address familiar for that user for ``familiar_days``.
  A familiar pair is delayed but never locked, until it has more than
  ``familiar_max_failures`` counted failures within a day: then it loses its standing (the
  server warns) and is treated as any other pair. Failures from elsewhere never touch it.
- **Spraying**: an address that failed for ``spray_usernames`` distinct usernames within the
  window is delayed as a whole (every attempt but a familiar pair's), doubling per further
  username, up to the same cap.
- At most ``max_delayed_per_address`` delayed attempts per address wait at once; any more
  fail at once, so delays hold few handshake slots.
- Clients in ``exempt_networks`` are delayed at most, never locked.

Failures count when they happen, not when attempts start: a browser opening thirty
connections at once with the right password must not lock its own address out.
Memory is bounded: each table keeps its ``max_entries`` most recently failed keys.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import ipaddress
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from socksauth.config import IPNetwork, ThrottleSettings, key_in_network
from socksauth.logs import get_logger

__all__ = ["Admission", "LoginThrottle", "PairChange", "ThrottleSettings", "address_key"]

log = get_logger("throttle")

DAY_SECONDS = 86_400.0
# Digest bytes kept per remembered wrong password: enough that two passwords never collide
# in a list of three, too few to be worth anything without the key.
_DIGEST_BYTES = 16


class Failure(enum.Enum):
    """Why a login failed, as the metrics count it."""

    WRONG_PASSWORD = "wrong_password"  # noqa: S105 (a label, not a password)
    UNKNOWN_USER = "unknown_user"
    UNUSABLE_ACCOUNT = "unusable_account"  # disabled or expired
    # One of the pair's last wrong passwords again: not counted.
    REPEATED_PASSWORD = "repeated_password"  # noqa: S105 (a label)
    LOCKED_OUT = "locked_out"  # not verified: the pair is locked
    TOO_MANY_DELAYED = "too_many_delayed"  # not verified: the address has enough waiting
    # Not verified: failures verified while it waited for its turn raised the delay it owes.
    QUEUED_BEHIND_FAILURES = "queued_behind_failures"


class ThrottleObserver(Protocol):
    """Told what the throttle decides (metrics); called on the loop, must not raise."""

    def failed(self, reason: Failure) -> None: ...

    def delayed(self, seconds: float) -> None: ...

    def lockout_started(self) -> None: ...

    def locked_now(self, count: int) -> None: ...

    def store_error(self) -> None: ...


class NoThrottleObserver:
    def failed(self, reason: Failure) -> None:
        pass

    def delayed(self, seconds: float) -> None:
        pass

    def lockout_started(self) -> None:
        pass

    def locked_now(self, count: int) -> None:
        pass

    def store_error(self) -> None:
        pass


@dataclass(frozen=True, slots=True)
class Admission:
    """What to do with one login attempt: wait ``delay_seconds`` first, or refuse it."""

    delay_seconds: float = 0.0
    locked: bool = False


ADMIT = Admission()
LOCKED = Admission(locked=True)


@dataclass(slots=True)
class PairState:
    """What is known of one (username, address) pair."""

    failures: int = 0  # counted failures since the window last ran out
    last_failure_at: float = 0.0
    locked_until: float = 0.0
    lockouts: int = 0  # lockouts so far: the next one lasts twice as long
    day_failures: int = 0  # counted failures since day_started_at (familiar standing)
    day_started_at: float = 0.0
    recent: deque[bytes] = field(default_factory=deque)  # HMACs of the last wrong passwords


@dataclass(slots=True, kw_only=True)
class PairChange:
    """What just happened to a pair, for whoever shares it (auth/throttle_sharing.py)."""

    counted: int = 0  # failures added to the count
    locked: bool = False  # this process locked the pair just now
    demoted: bool = False  # the pair lost its familiar standing just now
    succeeded: bool = False  # the right password
    reset: bool = False  # ... and the pair had failures to forget


@dataclass(frozen=True, slots=True, kw_only=True)
class ThrottleEntry:
    """One pair as `socksauth throttle list` shows it."""

    username: str
    address: str
    failures: int
    last_failure_at: float  # seconds since the epoch
    locked_until: float | None
    lockouts: int
    delay_seconds: float
    familiar: bool


@functools.lru_cache(maxsize=4096)  # several calls per login, with few distinct addresses
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


K = TypeVar("K")
V = TypeVar("V")
Pair = tuple[str, str]  # (username, address_key)


class _Bounded(OrderedDict[K, V]):
    """An OrderedDict that forgets its least recently touched keys beyond ``limit``."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def touch(self, key: K, value: V) -> None:
        self[key] = value
        self.move_to_end(key)
        while len(self) > self.limit:
            self.popitem(last=False)


class LoginThrottle:
    """Decides, per attempt, whether to verify a password now, later, or not at all.

    Use: ``admit()`` before verifying; when it asks for a delay, ``hold()`` a delay slot
    (False: too many wait, fail at once) and ``release()`` it after; then ``failed()`` or
    ``succeeded()``. Not thread-safe; the event loop calls it. ``clock`` is wall time
    (seconds since the epoch): familiar standing lasts days, and nodes compare times.
    """

    def __init__(
        self,
        settings: ThrottleSettings | None = None,
        clock: Callable[[], float] = time.time,
        observer: ThrottleObserver | None = None,
        secret: bytes | None = None,
    ) -> None:
        self.settings = settings if settings is not None else ThrottleSettings()
        self._clock = clock
        self.observer: ThrottleObserver = observer if observer is not None else NoThrottleObserver()
        # Keys the HMACs of remembered wrong passwords; random unless the store shares one.
        self._secret = secret if secret is not None else secrets.token_bytes(32)
        limit = self.settings.max_entries
        self._pairs: _Bounded[Pair, PairState] = _Bounded(limit)
        self._familiar: _Bounded[Pair, float] = _Bounded(limit)  # → the last success at
        self._sprayed: _Bounded[str, dict[str, float]] = _Bounded(limit)  # → {name: failed at}
        self._delayed: dict[str, int] = {}  # address → delayed attempts waiting now
        self._locked: dict[Pair, float] = {}  # pair → locked until
        # Called after each change of a pair (to share it through the store).
        self.on_change: Callable[[str, str, PairChange], None] | None = None

    # --- the login path ---------------------------------------------------------------

    def admit(self, client_host: str, username: str) -> Admission:
        """Whether an attempt for ``username`` from ``client_host`` may be verified, and after
        how long."""
        if not self.settings.enabled:
            return ADMIT
        now = self._clock()
        address = address_key(client_host)
        pair = self._pair(username, address, now)
        if pair is not None and pair.locked_until > now:
            self.observer.failed(Failure.LOCKED_OUT)
            return LOCKED
        delay = self._delay(pair.failures) if pair is not None else 0.0
        if not self._is_familiar(username, address, now):
            delay = max(delay, self._spray_delay(address, now))
        return Admission(delay_seconds=delay) if delay else ADMIT

    def hold(self, client_host: str) -> bool:
        """Take one of the address's delay slots; False (and counted) when all are taken."""
        address = address_key(client_host)
        waiting = self._delayed.get(address, 0)
        if waiting >= self.settings.max_delayed_per_address:
            self.observer.failed(Failure.TOO_MANY_DELAYED)
            return False
        self._delayed[address] = waiting + 1
        return True

    def release(self, client_host: str) -> None:
        address = address_key(client_host)
        waiting = self._delayed.get(address, 0) - 1
        if waiting > 0:
            self._delayed[address] = waiting
        else:
            self._delayed.pop(address, None)

    def failed(
        self,
        client_host: str,
        username: str,
        password: str,
        reason: Failure = Failure.WRONG_PASSWORD,
    ) -> None:
        """A verified attempt failed (wrong password, unknown or unusable account)."""
        if not self.settings.enabled:
            self.observer.failed(reason)
            return
        now = self._clock()
        settings = self.settings
        address = address_key(client_host)
        pair = self._pair(username, address, now)
        if pair is None:
            pair = PairState(day_started_at=now)
        digest = self._digest(username, password)
        if pair.locked_until > now or digest in pair.recent:
            # Locked meanwhile (attempts in flight) or a repeat: not counted; a repeat keeps
            # the pair's delay alive, as its owner's stale script keeps trying.
            self.observer.failed(Failure.REPEATED_PASSWORD if digest in pair.recent else reason)
            pair.last_failure_at = now
            self._store(username, address, pair, PairChange())
            return
        self.observer.failed(reason)
        pair.recent.append(digest)
        while len(pair.recent) > settings.remembered_passwords:
            pair.recent.popleft()
        pair.failures += 1
        pair.last_failure_at = now
        if now - pair.day_started_at >= DAY_SECONDS:
            pair.day_started_at, pair.day_failures = now, 0
        pair.day_failures += 1
        self._note_username(address, username, now)
        change = PairChange(counted=1)
        change.demoted, change.locked = self._judge(username, address, pair, now)
        self._store(username, address, pair, change)

    def _judge(self, username: str, address: str, pair: PairState, now: float) -> tuple[bool, bool]:
        """After failures were added to ``pair``: (lost its familiar standing, locked now)."""
        settings = self.settings
        familiar = self._is_familiar(username, address, now)
        demoted = False
        if familiar and pair.day_failures > settings.familiar_max_failures:
            self._familiar.pop((username, address), None)
            familiar, demoted = False, True
            log.warning(
                "user %r at %s lost its familiar standing: %d failed logins within a day",
                username,
                address,
                pair.day_failures,
            )
        exempt = settings.is_exempt(address.partition("/")[0])
        if (
            pair.failures >= settings.lockout_failures
            and not familiar
            and not exempt
            and pair.locked_until <= now
        ):
            self._lock(username, address, pair, now)
            return demoted, True
        return demoted, False

    def succeeded(self, client_host: str, username: str) -> None:
        """The right password: the pair starts afresh and its address becomes familiar."""
        if not self.settings.enabled:
            return
        address = address_key(client_host)
        key = (username, address)
        self._familiar.touch(key, self._clock())
        had_failures = self._pairs.pop(key, None) is not None
        if self.on_change is not None:
            self.on_change(username, address, PairChange(succeeded=True, reset=had_failures))

    # --- administration (`socksauth throttle`, `user passwd`/`enable`) -------------------

    def entries(self) -> Iterator[ThrottleEntry]:
        """The pairs with failures or a lockout now (and each one's current delay)."""
        now = self._clock()
        for key in list(self._pairs):
            username, address = key
            pair = self._pair(username, address, now)
            if pair is None:
                continue
            yield ThrottleEntry(
                username=username,
                address=address,
                failures=pair.failures,
                last_failure_at=pair.last_failure_at,
                locked_until=pair.locked_until if pair.locked_until > now else None,
                lockouts=pair.lockouts,
                delay_seconds=self._delay(pair.failures),
                familiar=self._is_familiar(username, address, now),
            )

    def clear(self, username: str | None = None, network: IPNetwork | None = None) -> int:
        """Forget the failures and lockouts of ``username`` (any address), of addresses in
        ``network`` (any user), of both, or of everyone; how many pairs were cleared. The
        address's spraying record goes with it when only a network is given."""
        cleared = 0
        for key in list(self._pairs):
            name, address = key
            if username is not None and name != username:
                continue
            if network is not None and not key_in_network(address, network):
                continue
            del self._pairs[key]
            self._locked.pop((name, address), None)
            cleared += 1
        if username is None:
            for address in list(self._sprayed):
                if network is None or key_in_network(address, network):
                    del self._sprayed[address]
        else:
            for address, names in list(self._sprayed.items()):
                if network is None or key_in_network(address, network):
                    names.pop(username, None)
        self.observer.locked_now(self._locked_count(self._clock()))
        return cleared

    # --- state shared with other processes (store) -----------------------------------

    def merge(
        self, stored: PairState, username: str, address: str, familiar_at: float, pending: int
    ) -> None:
        """Take the pair as the store has it (every process's failures added up), plus the
        ``pending`` failures this process counted since and has not written yet; a lockout
        made anywhere holds here, and enough failures counted everywhere lock it here."""
        key = (username, address)
        now = self._clock()
        recent_enough = now - familiar_at <= self.settings.familiar_days * DAY_SECONDS
        if familiar_at > 0 and recent_enough and familiar_at > self._familiar.get(key, 0.0):
            self._familiar.touch(key, familiar_at)
        mine = self._pairs.get(key)
        if stored.failures == 0 and stored.locked_until <= now and pending == 0:
            if mine is not None and not mine.failures:
                del self._pairs[key]
            return
        if mine is not None:
            stored.recent = deque(dict.fromkeys([*stored.recent, *mine.recent]))
            while len(stored.recent) > self.settings.remembered_passwords:
                stored.recent.popleft()
            stored.lockouts = max(stored.lockouts, mine.lockouts)
            stored.locked_until = max(stored.locked_until, mine.locked_until)
        stored.failures += pending
        stored.day_failures += pending
        self._pairs.touch(key, stored)
        if stored.locked_until > now:
            self._locked[key] = stored.locked_until
            self.observer.locked_now(self._locked_count(now))
            return
        demoted, locked = self._judge(username, address, stored, now)
        if (demoted or locked) and self.on_change is not None:
            self.on_change(username, address, PairChange(locked=locked, demoted=demoted))

    def familiar_at(self, username: str, address: str) -> float:
        """When the user last logged in from the address, if that still makes it familiar."""
        if not self._is_familiar(username, address, self._clock()):
            return 0.0
        return self._familiar.get((username, address), 0.0)

    def pair_state(self, username: str, address: str) -> PairState | None:
        return self._pair(username, address, self._clock())

    @property
    def secret(self) -> bytes:
        return self._secret

    @secret.setter
    def secret(self, value: bytes) -> None:
        self._secret = value

    # --- internals ----------------------------------------------------------------

    def _pair(self, username: str, address: str, now: float) -> PairState | None:
        key = (username, address)
        pair = self._pairs.get(key)
        if pair is None:
            return None
        if pair.locked_until and pair.locked_until <= now:
            # The lockout is over: no free failures this time, the next lockout is longer,
            # and the window runs from the lockout's end (a long lockout is not forgotten
            # the moment it ends).
            pair.last_failure_at = max(pair.last_failure_at, pair.locked_until)
            pair.locked_until = 0.0
            pair.failures = min(pair.failures, self.settings.free_failures)
            self._locked.pop(key, None)
            self.observer.locked_now(self._locked_count(now))
        if not pair.locked_until and now - pair.last_failure_at >= self.settings.window_seconds:
            del self._pairs[key]
            return None
        return pair

    def _lock(self, username: str, address: str, pair: PairState, now: float) -> None:
        settings = self.settings
        seconds = min(
            settings.lockout_seconds * 2.0 ** min(pair.lockouts, 62), settings.max_lockout_seconds
        )
        pair.locked_until = now + seconds
        pair.lockouts += 1
        self._locked[(username, address)] = pair.locked_until
        self.observer.lockout_started()
        self.observer.locked_now(self._locked_count(now))
        log.warning(
            "logins of user %r from %s locked for %.0f s after %d failed logins (lockout %d)",
            username,
            address,
            seconds,
            pair.failures,
            pair.lockouts,
        )

    def _locked_count(self, now: float) -> int:
        for key, until in list(self._locked.items()):
            if until <= now:
                del self._locked[key]
        return len(self._locked)

    def _store(self, username: str, address: str, pair: PairState, change: PairChange) -> None:
        self._pairs.touch((username, address), pair)
        if self.on_change is not None:
            self.on_change(username, address, change)

    def _is_familiar(self, username: str, address: str, now: float) -> bool:
        at = self._familiar.get((username, address))
        if at is None:
            return False
        if now - at > self.settings.familiar_days * DAY_SECONDS:
            del self._familiar[(username, address)]
            return False
        return True

    def _note_username(self, address: str, username: str, now: float) -> None:
        names = self._sprayed.get(address) or {}
        window = self.settings.window_seconds
        for name, at in list(names.items()):
            if now - at >= window:
                del names[name]
        new = names.pop(username, None) is None
        names[username] = now
        if new and len(names) == self.settings.spray_usernames:
            log.warning(
                "client %s failed logins for %d usernames within %.0f s: every login from it "
                "is delayed (spraying)",
                address,
                len(names),
                window,
            )
        # Enough names to tell a spray; older ones are forgotten first.
        while len(names) > 4 * self.settings.spray_usernames:
            del names[next(iter(names))]
        self._sprayed.touch(address, names)

    def _spray_delay(self, address: str, now: float) -> float:
        names = self._sprayed.get(address)
        if not names:
            return 0.0
        window = self.settings.window_seconds
        for name, at in list(names.items()):
            if now - at >= window:
                del names[name]
        over = len(names) - self.settings.spray_usernames
        if over < 0:
            return 0.0
        return self._delay(over + self.settings.free_failures)

    def _delay(self, failures: int) -> float:
        over = failures - self.settings.free_failures
        if over < 0:
            return 0.0
        return min(
            self.settings.delay_seconds * 2.0 ** min(over, 62), self.settings.max_delay_seconds
        )

    def _digest(self, username: str, password: str) -> bytes:
        message = b"\0".join(
            part.encode("utf-8", "surrogateescape") for part in (username, password)
        )
        return hmac.digest(self._secret, message, hashlib.sha256)[:_DIGEST_BYTES]

    @property
    def tracked(self) -> tuple[int, int, int]:
        """How many pairs, familiar pairs and addresses are remembered."""
        return len(self._pairs), len(self._familiar), len(self._sprayed)
