"""Admission limits: connections in total (refused beyond), clients in the handshake (per
address and in total; beyond, a client waits its turn), concurrent connections per user, and
token buckets for bandwidth. Counting only: no I/O and no clock of their own (the token bucket
is given one); per-user counts shared with other nodes go through the ConnectionLeases seam."""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

from socksauth.auth.throttle import address_key
from socksauth.errors import ConfigError
from socksauth.health import Health
from socksauth.logs import get_logger
from socksauth.store.interfaces import ConnectionLeases

log = get_logger("limits")


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionCaps:
    """Caps on accepted connections; None means no cap."""

    # Every client connection, from accept to close.
    max_connections: int | None = 10_000
    # Clients in the handshake at once (not yet authenticated): they cost memory and, while
    # their password is verified, 19 MiB and a core each; an attacker opens these for free.
    # Clients beyond it wait (accepted, not read from) until one finishes; they are refused
    # only beyond max_connections, and closed at their handshake deadline.
    max_unauthenticated: int | None = 1_000
    # The same per client address (IPv6 by /64), so one address's flood cannot take every
    # handshake slot; its further clients wait their turn. Also bounds how many wrong
    # passwords one address has in flight before the login throttle sees them fail.
    max_unauthenticated_per_address: int | None = 32

    def __post_init__(self) -> None:
        for name in ("max_connections", "max_unauthenticated", "max_unauthenticated_per_address"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name}: must be at least 1 (or no limit)")


class Refusal(Exception):
    """Why a connection was not admitted; the message is for the log."""


class ClientSlot:
    """One accepted client's place in the counts; release it once, when the client is gone.

    A slot starts *waiting* when its address (or the whole server) already has as many
    clients in the handshake as the caps allow: the client is accepted but not read from
    until ``started`` is true. ``when_started`` registers the one callback that says so.
    """

    __slots__ = ("_address", "_limits", "_on_start", "_released", "_unauthenticated", "started")

    def __init__(self, limits: ConnectionLimits, address: str) -> None:
        self._limits = limits
        self._address = address
        self._unauthenticated = True
        self._released = False
        self._on_start: Callable[[], None] | None = None
        self.started = False

    def when_started(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once this waiting slot may start its handshake."""
        self._on_start = callback

    def _start(self) -> None:
        self.started = True
        if self._on_start is not None:
            callback, self._on_start = self._on_start, None
            callback()

    def leave_handshake(self) -> None:
        """The client no longer counts as in the handshake: its credentials have been read
        (what is left is their verification, whose turns auth/verifier.py shares out between
        addresses, so the address's next client, a warm login say, need not wait for it), or
        it needed none. Idempotent."""
        if self._unauthenticated and not self._released and self.started:
            self._unauthenticated = False
            self._limits._leave_handshake(self._address)

    def release(self) -> None:
        """The client is gone (also while still waiting). Idempotent."""
        if self._released:
            return
        self.leave_handshake()
        self._released = True
        self._on_start = None
        self._limits._leave(self)


class ConnectionLimits:
    """Counts clients at accept; ``admit`` refuses beyond max_connections and makes a client
    wait beyond the handshake caps.

    Waiting instead of refusing is what a busy rightful host needs: a crawler, a NAT'ed office
    or a browser opens far more connections at once than the per-address cap, and each of
    them completes in milliseconds once it may start. A waiting connection costs a socket and
    a few small objects (no read buffer: it is not read from), is bounded by max_connections,
    and is still closed at its handshake deadline. Slots that free up go to the waiting
    addresses in turn (round robin), so one address's flood delays only itself.
    """

    def __init__(self, caps: ConnectionCaps) -> None:
        self.caps = caps
        self.connections = 0
        self.unauthenticated = 0  # clients in the handshake (started, not yet authenticated)
        self._unauthenticated_by_address: dict[str, int] = {}
        # Addresses with waiting clients, in the order they get the next free slot.
        self._waiting: OrderedDict[str, deque[ClientSlot]] = OrderedDict()
        self.waiting = 0

    def admit(self, client_host: str) -> ClientSlot:
        """A slot for a new client at ``client_host``: started, or waiting for a start.

        Raises:
            Refusal: max_connections is reached; close the connection without a word
                (nothing the client could send yet would change it).
        """
        caps = self.caps
        if caps.max_connections is not None and self.connections >= caps.max_connections:
            raise Refusal(f"{self.connections} connections (max_connections)")
        self.connections += 1
        address = address_key(client_host)
        slot = ClientSlot(self, address)
        if address not in self._waiting and self._may_start(address):
            self._start(slot)
        else:
            self._waiting.setdefault(address, deque()).append(slot)
            self.waiting += 1
            if self._may_start(address):
                # Only clients that left while waiting stood before it.
                self._start_waiting()
        return slot

    def _handshakes_full(self) -> bool:
        """Whether max_unauthenticated clients are in the handshake: nobody may start."""
        limit = self.caps.max_unauthenticated
        return limit is not None and self.unauthenticated >= limit

    def _may_start(self, address: str) -> bool:
        if self._handshakes_full():
            return False
        per_address = self.caps.max_unauthenticated_per_address
        return per_address is None or (
            self._unauthenticated_by_address.get(address, 0) < per_address
        )

    def _start(self, slot: ClientSlot) -> None:
        address = slot._address
        self.unauthenticated += 1
        self._unauthenticated_by_address[address] = (
            self._unauthenticated_by_address.get(address, 0) + 1
        )
        slot._start()

    def _leave_handshake(self, address: str) -> None:
        self.unauthenticated -= 1
        remaining = self._unauthenticated_by_address[address] - 1
        if remaining:
            self._unauthenticated_by_address[address] = remaining
        else:
            del self._unauthenticated_by_address[address]
        if self._waiting:
            self._start_waiting()

    def _start_waiting(self) -> None:
        """Start waiting clients while the caps allow, one address at a time in turn."""
        passed_over = 0
        while self._waiting and passed_over < len(self._waiting):
            address, queue = next(iter(self._waiting.items()))
            while queue and queue[0]._released:
                queue.popleft()  # gone while waiting (counted out in _leave)
            if not queue:
                del self._waiting[address]
                continue
            if not self._may_start(address):
                if self._handshakes_full():
                    return
                self._waiting.move_to_end(address)  # this address is at its own cap
                passed_over += 1
                continue
            slot = queue.popleft()
            self.waiting -= 1
            if queue:
                self._waiting.move_to_end(address)
            else:
                del self._waiting[address]
            passed_over = 0
            self._start(slot)

    def _leave(self, slot: ClientSlot) -> None:
        self.connections -= 1
        if not slot.started:
            self.waiting -= 1

    @property
    def addresses_in_handshake(self) -> int:
        return len(self._unauthenticated_by_address)


class UserLease:
    """One of a user's concurrent connections; release it once, when the connection ends."""

    __slots__ = ("_counter", "_released", "shared", "username")

    def __init__(self, counter: UserConnections, username: str, shared: bool) -> None:
        self._counter = counter
        self.username = username
        # Counted in the shared leases too (other nodes see it), not only in this process.
        self.shared = shared
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._counter._release(self)

    def __enter__(self) -> UserLease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class UserConnections:
    """Concurrent connections per user (tunnels, associations and bindings alike).

    Counted in this process; for users with a limit also in ``leases``, shared by every node
    (and worker process) on the database, so the limit holds for all of them together.
    """

    def __init__(self, leases: ConnectionLeases | None = None) -> None:
        self._counts: dict[str, int] = {}
        self._leases = leases
        # While the leases' database is down: one line per outage, and connections do not
        # each wait for it to fail; it is asked again after a back-off (socksauth/health.py).
        self.health = Health("counting limited users' connections in the database", log)
        self._retry_at = 0.0

    async def acquire(self, username: str, limit: int | None) -> UserLease | None:
        """A lease if ``username`` has fewer than ``limit`` connections (None: no limit)."""
        count = self._counts.get(username, 0)
        if limit is not None and count >= limit:
            return None
        # Counted before any await, so concurrent logins of this process see each other.
        self._counts[username] = count + 1
        lease = UserLease(self, username, shared=False)
        if limit is None or self._leases is None:
            return lease
        now = time.monotonic()
        if self.health.failing and now < self._retry_at:
            return lease  # the database failed a moment ago: this process counts alone
        try:
            admitted = await self._leases.acquire(username, limit)
        except Exception as error:
            # The database is away: the limit still holds in this process; other nodes'
            # connections cannot be counted until it is back.
            self._retry_at = time.monotonic() + self.health.failed(error)
            return lease
        self.health.succeeded()
        if not admitted:
            lease.release()
            return None
        lease.shared = True
        return lease

    def count(self, username: str) -> int:
        return self._counts.get(username, 0)

    def _release(self, lease: UserLease) -> None:
        username = lease.username
        remaining = self._counts[username] - 1
        if remaining:
            self._counts[username] = remaining
        else:
            del self._counts[username]
        if lease.shared and self._leases is not None:
            self._leases.release(username)


class TokenBucket:
    """Bytes per second with a burst allowance, charged per chunk read, never per byte.

    A chunk is charged whole even when the bucket holds less: the balance goes into debt and
    ``consume`` says how long until it is paid off. The relay reads a chunk, forwards it,
    and if there is debt pauses reading for that long. The average rate is exact; bursts are
    bounded by ``burst_bytes`` plus one chunk.
    """

    __slots__ = ("_clock", "_last", "_tokens", "burst_bytes", "rate_bytes_per_second")

    def __init__(
        self,
        rate_bytes_per_second: float,
        burst_bytes: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not rate_bytes_per_second > 0:
            raise ConfigError("bandwidth limit: must be a positive number of bytes per second")
        self.rate_bytes_per_second = float(rate_bytes_per_second)
        # One second's worth by default: smooth enough, and a small transfer is not slowed.
        self.burst_bytes = float(burst_bytes if burst_bytes is not None else rate_bytes_per_second)
        if self.burst_bytes < 0:
            raise ConfigError("bandwidth burst: must not be negative")
        self._clock = clock
        self._last = clock()
        self._tokens = self.burst_bytes

    def consume(self, nbytes: int) -> float:
        """Charge ``nbytes``; the seconds to wait before reading again (0.0: go on)."""
        now = self._clock()
        tokens = min(
            self.burst_bytes, self._tokens + (now - self._last) * self.rate_bytes_per_second
        )
        self._last = now
        tokens -= nbytes
        self._tokens = tokens
        return 0.0 if tokens >= 0 else -tokens / self.rate_bytes_per_second

    @property
    def tokens(self) -> float:
        """The balance now (negative: debt)."""
        now = self._clock()
        return min(self.burst_bytes, self._tokens + (now - self._last) * self.rate_bytes_per_second)


_RATE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}


def parse_rate(text: str) -> int:
    """Bytes per second from ``10MiB/s``, ``500kB/s``, ``1000000`` (bytes, not bits).

    Raises:
        ConfigError: not a positive number with a known unit.
    """
    value = text.strip().lower().removesuffix("/s").removesuffix("ps").strip()
    number = value.rstrip("kmgib")
    unit = value[len(number) :]
    try:
        amount = float(number)
    except ValueError:
        raise ConfigError(f"bandwidth {text!r}: write e.g. 10MiB/s or 500kB/s") from None
    if unit not in _RATE_UNITS:
        raise ConfigError(f"bandwidth {text!r}: unknown unit {unit!r} (B, kB, KiB, MB, MiB, …)")
    rate = int(amount * _RATE_UNITS[unit])
    if rate < 1:
        raise ConfigError(f"bandwidth {text!r}: must be at least 1 byte per second")
    return rate


def format_rate(bytes_per_second: int) -> str:
    """The shortest exact form that parse_rate reads back: ``10MiB/s``, ``500kB/s``, ``999B/s``."""
    for unit, size in (("GiB", 1024**3), ("GB", 1000**3), ("MiB", 1024**2), ("MB", 1000**2),
                       ("KiB", 1024), ("kB", 1000)):  # fmt: skip
        if bytes_per_second >= size and bytes_per_second % size == 0:
            return f"{bytes_per_second // size}{unit}/s"
    return f"{bytes_per_second}B/s"
