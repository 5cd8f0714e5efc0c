"""Traffic quotas: ``10GiB/month`` parsed, period boundaries, and the tracker that counts every
tunnel's bytes into the database and ends the tunnels of users over quota, on every node.

The relay already counts the bytes of each direction (server/relay.py); nothing is added per
chunk. Every ``quota_flush_seconds`` the tracker reads those counters for the tunnels of users
with a quota, adds what moved since the last round to this node's row of the current hour
(store/usage.py), reads back the sum of every node's rows in each user's period, and ends the
tunnels of users at or over their limit (outcome ``quota_exceeded``). New requests of such a
user are refused with reply 0x02.

Bounds: a node's unflushed share of a user's traffic is what that user's tunnels on the node
move in one flush interval (plus, while the database is unreachable, everything since it
was last reached: the node then enforces on what it knows, the last total plus its own
unflushed bytes). Another node's traffic is seen one flush interval after it flushed, so a
quota can be overshot by what the user moves on all nodes in about two flush intervals.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from typing import Protocol

from socksauth.errors import ConfigError
from socksauth.logs import get_logger
from socksauth.store.interfaces import LiveUsers, TrafficUsage, UserRecord

log = get_logger("quota")

CALENDAR_PERIODS = ("day", "week", "month")
# A rolling window of N days ("30d"); usage older than the longest is deleted.
MAX_ROLLING_DAYS = 90
# Kept a few days beyond the longest period (a month, or MAX_ROLLING_DAYS): then deleted.
KEEP_USAGE = timedelta(days=MAX_ROLLING_DAYS + 2)
PRUNE_EVERY_SECONDS = 600.0
# A user admitted this recently keeps having its total read with the others, so its next
# request finds a fresh total without a query of its own.
RECENT_SECONDS = 60.0

_SIZE_UNITS = {
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
    "t": 1000**4,
    "tb": 1000**4,
    "tib": 1024**4,
}
_QUOTA = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]*)\s*/\s*([a-zA-Z0-9]+)\s*")
_ROLLING = re.compile(r"([0-9]+)d")


def parse_quota(text: str) -> tuple[int, str]:
    """(bytes, period) from ``10GiB/month``, ``500MB/day``, ``1TiB/week``, ``50GB/30d``.

    Raises:
        ConfigError: not an amount with a known unit, a slash and a known period.
    """
    match = _QUOTA.fullmatch(text)
    if match is None:
        raise ConfigError(f"quota {text!r}: write e.g. 10GiB/month, 500MB/day or 50GB/30d")
    number, unit, period = match.groups()
    if unit.lower() not in _SIZE_UNITS:
        raise ConfigError(f"quota {text!r}: unknown unit {unit!r} (B, kB, KiB, MB, MiB, GiB, …)")
    amount = int(float(number) * _SIZE_UNITS[unit.lower()])
    if amount < 1:
        raise ConfigError(f"quota {text!r}: must be at least 1 byte")
    return amount, validate_period(period.lower(), text)


def validate_period(period: str, text: str | None = None) -> str:
    """``period`` if it is day, week, month or Nd (1 to MAX_ROLLING_DAYS); ConfigError else."""
    if period in CALENDAR_PERIODS:
        return period
    rolling = _ROLLING.fullmatch(period)
    if rolling is None or not 1 <= int(rolling.group(1)) <= MAX_ROLLING_DAYS:
        raise ConfigError(
            f"quota {text or period!r}: the period is day, week, month or Nd "
            f"(a rolling window of 1 to {MAX_ROLLING_DAYS} days)"
        )
    return f"{int(rolling.group(1))}d"


def format_bytes(amount: int) -> str:
    """The shortest exact form that parse_quota reads back: ``10GiB``, ``500MB``, ``999B``."""
    for unit, size in (("TiB", 1024**4), ("TB", 1000**4), ("GiB", 1024**3), ("GB", 1000**3),
                       ("MiB", 1024**2), ("MB", 1000**2), ("KiB", 1024), ("kB", 1000)):  # fmt: skip
        if amount >= size and amount % size == 0:
            return f"{amount // size}{unit}"
    return f"{amount}B"


def format_usage(amount: int) -> str:
    """A byte count for people: ``1.25GiB``, ``312.0KiB``, ``17B``."""
    size = float(amount)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{amount}B" if unit == "B" else f"{size:.2f}{unit}"
        size /= 1024
    return f"{size:.2f}TiB"


def hour_start(now: datetime, zone: tzinfo = UTC) -> datetime:
    """The start of the hour holding ``now`` in ``zone``, as UTC: a usage row's bucket."""
    local = now.astimezone(zone)
    return local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)


def period_start(period: str, now: datetime, zone: tzinfo = UTC) -> datetime:
    """The first instant (UTC) whose traffic counts against a quota of ``period`` at ``now``:
    local midnight of today, of this week's Monday, of this month's first, or for ``Nd`` the
    current hour's start N days ago (a rolling window, counted by the hour)."""
    if period not in CALENDAR_PERIODS:
        return hour_start(now, zone) - timedelta(days=int(period[:-1]))
    local = now.astimezone(zone)
    day = local.date()
    if period == "week":
        day -= timedelta(days=day.weekday())
    elif period == "month":
        day = day.replace(day=1)
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def resets_at(period: str, now: datetime, zone: tzinfo = UTC) -> datetime | None:
    """When the period holding ``now`` ends (UTC); None for a rolling window, which frees
    its oldest hour every hour instead."""
    if period not in CALENDAR_PERIODS:
        return None
    start = period_start(period, now, zone).astimezone(zone).date()
    if period == "day":
        end = start + timedelta(days=1)
    elif period == "week":
        end = start + timedelta(days=7)
    else:
        end = (start.replace(day=28) + timedelta(days=4)).replace(day=1)
    return datetime(end.year, end.month, end.day, tzinfo=zone).astimezone(UTC)


@dataclass(frozen=True, slots=True, kw_only=True)
class QuotaStatus:
    """One user's quota as `user list` and `stats` show it."""

    limit: int
    period: str
    used: int  # every node's bytes in the current period, as flushed
    resets_at: datetime | None  # None: a rolling window

    @property
    def limit_text(self) -> str:
        return f"{format_bytes(self.limit)}/{self.period}"


async def quota_statuses(
    users: Sequence[UserRecord], usage: TrafficUsage, now: datetime, zone: tzinfo = UTC
) -> dict[str, QuotaStatus]:
    """The quota of every user in ``users`` that has one, with its use, in one query."""
    quotas = {
        user.username: (user.quota_bytes, user.quota_period)
        for user in users
        if user.quota_bytes is not None and user.quota_period is not None
    }
    totals = await usage.totals(
        {name: period_start(period, now, zone) for name, (_, period) in quotas.items()}
    )
    return {
        name: QuotaStatus(
            limit=limit,
            period=period,
            used=totals.get(name, 0),
            resets_at=resets_at(period, now, zone),
        )
        for name, (limit, period) in quotas.items()
    }


class Metered(Protocol):
    """A client connection as the tracker sees it."""

    user: UserRecord | None
    # The part of traffic() already handed to the tracker.
    quota_counted: int

    def traffic(self) -> int:
        """Bytes moved both ways so far (the relay's or the association's counters)."""
        ...

    def end_for_quota(self) -> None:
        """End the tunnel, association or binding now (outcome quota_exceeded)."""
        ...


def _utc_now() -> datetime:
    return datetime.now(UTC)


class QuotaTracker:
    """This node's share of every quota: counts, flushes, reads totals, enforces."""

    def __init__(
        self,
        usage: TrafficUsage | None,
        users: LiveUsers | None,
        node: str,
        *,
        zone: tzinfo = UTC,
        flush_seconds: float = 0.5,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        """``usage`` None: counted in this process only (tests of the server alone)."""
        self._usage = usage
        self._users = users
        self._node = node
        self.zone = zone
        self.flush_seconds = flush_seconds
        self._clock = clock
        self._pending: Counter[str] = Counter()
        # username → (bytes of every node in its period, as read; loop time of the read)
        self._used: dict[str, tuple[int, float]] = {}
        # username → (limit, period): the quota in force, from logins and re-reads.
        self._limits: dict[str, tuple[int, str]] = {}
        self._recent: dict[str, float] = {}
        self._limits_stale = False
        self._wake = asyncio.Event()
        self._next_prune = 0.0
        self._failing = False

    def use_settings(self, zone: tzinfo, flush_seconds: float) -> None:
        self.zone, self.flush_seconds = zone, flush_seconds

    def limits_changed(self) -> None:
        """An account changed somewhere: re-read the quotas of connected users now."""
        self._limits_stale = True
        self._wake.set()

    def used(self, username: str) -> int | None:
        """Bytes in ``username``'s period as this node knows them (None: never read)."""
        entry = self._used.get(username)
        if entry is None:
            return None
        return entry[0] + self._pending.get(username, 0)

    def over(self, username: str) -> bool:
        limit = self._limits.get(username)
        used = self.used(username)
        return limit is not None and used is not None and used >= limit[0]

    async def admit(self, user: UserRecord) -> bool:
        """Whether ``user`` may start a tunnel: False once its quota is used up, on any node.
        A total older than two flush intervals is read first; if the database is away, the
        last total known decides (none known: admitted)."""
        name = user.username
        if user.quota_bytes is None or user.quota_period is None:
            self._limits.pop(name, None)
            return True
        self._limits[name] = (user.quota_bytes, user.quota_period)
        loop = asyncio.get_running_loop()
        self._recent[name] = loop.time()
        entry = self._used.get(name)
        if entry is None or loop.time() - entry[1] > 2 * self.flush_seconds:
            try:
                await self._read_totals([name])
            except Exception as error:
                log.warning("could not read the traffic of %r (%s); using what is known",
                            name, type(error).__name__)  # fmt: skip
        return not self.over(name)

    def finished(self, client: Metered) -> None:
        """A connection ended: count its last bytes."""
        user = client.user
        if user is None or user.username not in self._limits:
            return
        total = client.traffic()
        if total > client.quota_counted:
            self._pending[user.username] += total - client.quota_counted
            client.quota_counted = total

    async def tick(self, live: Iterable[Metered]) -> None:
        """One round: count, (re-read quotas,) flush, read totals, end what is over."""
        if not (self._limits or self._limits_stale or self._pending):
            return  # nobody with a quota: no work, no query
        loop = asyncio.get_running_loop()
        clients: dict[str, list[Metered]] = defaultdict(list)
        for client in live:
            if client.user is not None:
                clients[client.user.username].append(client)
        now = loop.time()
        self._recent = {n: t for n, t in self._recent.items() if now - t < RECENT_SECONDS}
        if self._limits_stale and self._users is None:
            self._limits_stale = False
        elif self._limits_stale and self._users is not None:
            self._limits_stale = False
            names = set(clients) | set(self._recent) | set(self._limits)
            stored = await self._users.get_users(names)
            for name in names:
                record = stored.get(name)
                if record is None or record.quota_bytes is None or record.quota_period is None:
                    self._limits.pop(name, None)
                else:
                    self._limits[name] = (record.quota_bytes, record.quota_period)
        for name in list(self._limits):
            if name not in clients and name not in self._recent and not self._pending[name]:
                # Nobody of that user here any more: forget it until its next request.
                del self._limits[name]
                self._used.pop(name, None)
        for name in self._limits:
            for client in clients.get(name, ()):
                total = client.traffic()
                if total > client.quota_counted:
                    self._pending[name] += total - client.quota_counted
                    client.quota_counted = total
        await self.flush()
        if self._limits:
            await self._read_totals(list(self._limits))
        for name in self._limits:
            if self.over(name) and clients.get(name):
                log.info("quota of %r used up: ending its %d connection(s)", name,
                         len(clients[name]))  # fmt: skip
                for client in clients[name]:
                    client.end_for_quota()
        if self._usage is not None and now >= self._next_prune:
            self._next_prune = now + PRUNE_EVERY_SECONDS
            await self._usage.prune(self._clock() - KEEP_USAGE)

    async def flush(self) -> None:
        """Write the bytes counted since the last flush (kept for the next one on failure)."""
        self._pending = +self._pending  # drops zero counts
        if not self._pending:
            return
        batch, self._pending = self._pending, Counter()
        if self._usage is not None:
            try:
                await self._usage.add(self._node, hour_start(self._clock(), self.zone), batch)
            except BaseException:
                self._pending.update(batch)
                raise
        for name, amount in batch.items():
            entry = self._used.get(name)
            if entry is not None:
                # Now in the database: part of the total until the next read replaces it.
                self._used[name] = (entry[0] + amount, entry[1])

    async def _read_totals(self, names: Iterable[str]) -> None:
        now = self._clock()
        since = {
            name: period_start(self._limits[name][1], now, self.zone)
            for name in names
            if name in self._limits
        }
        if not since:
            return
        read_at = asyncio.get_running_loop().time()
        if self._usage is None:
            for name in since:
                self._used[name] = (self._used.get(name, (0, 0.0))[0], read_at)
            return
        totals = await self._usage.totals(since)
        for name in since:
            self._used[name] = (totals.get(name, 0), read_at)

    async def run(self, live: Callable[[], Iterable[Metered]]) -> None:
        """Tick every flush interval (sooner after a change of accounts) until cancelled."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.flush_seconds):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.tick(live())
                if self._failing:
                    log.info("traffic counts are written again")
                self._failing = False
            except Exception:
                if not self._failing:
                    log.exception("could not write or read traffic counts; retrying")
                self._failing = True
