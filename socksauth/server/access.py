"""Access: the destination policy and the limits one server applies to all its clients, and
the periodic re-read of rules and connected users' accounts that keeps them current."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from uuid import UUID

from socksauth.config import Settings
from socksauth.health import Health
from socksauth.logs import get_logger
from socksauth.rules import COMMAND_NAMES, Action, Rule
from socksauth.server.egress import EgressSelector, check_local
from socksauth.server.limits import (
    ConnectionCaps,
    ConnectionLimits,
    TokenBucket,
    UserConnections,
)
from socksauth.server.policy import DestinationPolicy
from socksauth.server.quota import QuotaTracker
from socksauth.server.relay import RelayBudget
from socksauth.store.interfaces import (
    ChangeFeed,
    ConnectionLeases,
    EgressSource,
    KillRequests,
    LiveUsers,
    RuleRecord,
    RuleSource,
    TrafficUsage,
    UserRecord,
)

log = get_logger("access")

# How long a login waits for the store's change counter before it trusts cached accounts
# anyway (ensure_current): far above a healthy read (a millisecond), far below a deadline.
ENSURE_CURRENT_SECONDS = 0.25


def policy_rules(records: Iterable[RuleRecord]) -> list[Rule]:
    """The stored rules as policy rules; a row that no longer parses is skipped and logged
    (the CLI validates, so only a hand-edited database has such rows)."""
    rules = []
    for record in records:
        try:
            rules.append(
                Rule(
                    action=Action(record.action),
                    username=record.username,
                    network=None if record.cidr is None else ipaddress.ip_network(record.cidr),
                    domain=record.domain,
                    port_min=record.port_min,
                    port_max=record.port_max,
                    command=None if record.command is None else COMMAND_NAMES[record.command],
                )
            )
        except (ValueError, KeyError) as error:
            log.error("rule %d ignored: %s", record.id, error)
    return rules


class Bandwidth:
    """Token buckets per user and direction, shared by all of a user's tunnels."""

    def __init__(self) -> None:
        self._buckets: dict[str, tuple[int, TokenBucket, TokenBucket]] = {}

    def buckets(self, user: UserRecord | None) -> tuple[TokenBucket, TokenBucket] | None:
        """(from client, to client) for ``user``, or None when the user has no limit."""
        if user is None or user.max_bandwidth_bytes_per_second is None:
            return None
        rate = user.max_bandwidth_bytes_per_second
        entry = self._buckets.get(user.username)
        if entry is None or entry[0] != rate:
            entry = (rate, TokenBucket(rate), TokenBucket(rate))
            self._buckets[user.username] = entry
        return entry[1], entry[2]

    def forget(self, usernames_in_use: Iterable[str]) -> None:
        """Drop the buckets of users with no connection left."""
        keep = set(usernames_in_use)
        for username in [name for name in self._buckets if name not in keep]:
            del self._buckets[username]


class Access:
    """What every client of one server checks: policy, limits, bandwidth. The policy object is
    replaced, never changed, when the rules are re-read."""

    def __init__(
        self,
        settings: Settings,
        policy: DestinationPolicy | None = None,
        rules: RuleSource | None = None,
        users: LiveUsers | None = None,
        changes: ChangeFeed | None = None,
        on_users_changed: Callable[[], None] | None = None,
        leases: ConnectionLeases | None = None,
        usage: TrafficUsage | None = None,
        egress_source: EgressSource | None = None,
        kills: KillRequests | None = None,
    ) -> None:
        """``changes``: where news of account and rule changes comes from; on each one the
        rules are re-read and ``on_users_changed`` drops cached accounts. ``leases``: per-user
        connection counts shared with other nodes (else counted in this process only).
        ``usage``: per-user traffic shared with other nodes, for quotas (else this process's).
        ``egress_source``: the users' egress entries, checked with the pools at start/reload.
        ``kills``: where kicks of this node's connections are read, on each change."""
        self.settings = settings
        self.policy = (
            policy
            if policy is not None
            else DestinationPolicy(deny_private=settings.deny_private_networks)
        )
        self.connections = ConnectionLimits(
            ConnectionCaps(
                max_connections=settings.max_connections,
                max_unauthenticated=settings.max_unauthenticated,
                max_unauthenticated_per_address=settings.max_unauthenticated_per_address,
            )
        )
        self.user_connections = UserConnections(leases)
        self.bandwidth = Bandwidth()
        # The relay memory all tunnels of this server share (server/relay.py).
        self.relay_budget = RelayBudget(settings.relay_memory_budget_bytes)
        self.quotas = QuotaTracker(
            usage,
            users,
            settings.node_name,
            zone=settings.quota_zone(),
            flush_seconds=settings.quota_flush_seconds,
        )
        self.egress = EgressSelector(settings.egress_pools, settings.egress_session_ttl_seconds)
        self._egress_source = egress_source
        self._rules = rules
        self._users = users
        self.changes = changes
        self._on_users_changed = on_users_changed
        self.kills = kills
        self._revision: int | None = None
        self._checking: asyncio.Task[bool] | None = None
        self._checking_since = 0.0
        self._own_endpoints: tuple[tuple[str, int], ...] = ()
        self._other_endpoints: tuple[tuple[str, int], ...] = ()

    def use_settings(self, settings: Settings) -> None:
        """Apply reloaded settings: admission caps (the clients already counted stay
        counted) and the private-network default of the policy."""
        self.settings = settings
        self.relay_budget.limit_bytes = settings.relay_memory_budget_bytes
        self.connections.caps = ConnectionCaps(
            max_connections=settings.max_connections,
            max_unauthenticated=settings.max_unauthenticated,
            max_unauthenticated_per_address=settings.max_unauthenticated_per_address,
        )
        self.quotas.use_settings(settings.quota_zone(), settings.quota_flush_seconds)
        self.egress.use_settings(settings.egress_pools, settings.egress_session_ttl_seconds)
        self._use_rules(self.policy.rules)

    async def check_egress(self) -> list[str]:
        """Warn (and return the warnings) for egress addresses of the pools and of any user
        that are not local, and pools users name that do not exist. A warning, not an
        error: such requests get reply 0x01, everyone else is served."""
        entries: set[str] = set()
        if self._egress_source is not None:
            entries = await self._egress_source.egress_entries()
        return check_local(self.settings.egress_pools, entries)

    def set_own_endpoints(self, endpoints: Sequence[tuple[str, int]]) -> None:
        """The listen addresses actually bound: targets the proxy must not loop back to."""
        self._own_endpoints = tuple(endpoints)
        self._use_rules(self.policy.rules)

    def set_other_endpoints(self, endpoints: Sequence[tuple[str, int]]) -> None:
        """This process's other listening addresses (the admin listener): clients must not
        reach them through the proxy either, or /metrics would be one CONNECT away."""
        self._other_endpoints = tuple(endpoints)
        self._use_rules(self.policy.rules)

    async def load_rules(self) -> None:
        """Re-read the rules; on a database error the rules in force stay."""
        if self._rules is None:
            return
        records = await self._rules.list_rules()
        rules = policy_rules(records)
        if tuple(rules) != self.policy.rules:
            self._use_rules(rules)
            log.info("destination rules loaded: %d", len(rules))

    def _use_rules(self, rules: Sequence[Rule]) -> None:
        self.policy = DestinationPolicy(
            rules,
            deny_private=self.settings.deny_private_networks,
            own_endpoints=(*self._own_endpoints, *self._other_endpoints),
        )

    @property
    def revision(self) -> int | None:
        """The store's change counter as last read (None before the first read)."""
        return self._revision

    async def check_changes(self) -> bool:
        """Read the store's change counter; when it moved, drop the cached accounts and
        re-read the rules. True when something changed (the first call only remembers)."""
        if self.changes is None:
            return False
        revision = await self.changes.revision()
        previous, self._revision = self._revision, revision
        if previous is None or revision == previous:
            return False
        if self._on_users_changed is not None:
            self._on_users_changed()
        self.quotas.limits_changed()
        await self.load_rules()
        return True

    async def ensure_current(self) -> None:
        """Before a login trusts a cached account: when the store may have changed since
        the last look (ChangeFeed.maybe_changed(), a stat on SQLite), read its change
        counter first, so an account disabled, deleted, expired or re-passworded a moment
        ago is decided on its new state. A login that arrives while such a read is under
        way waits for it too. Costs no query while nothing changed; on a database error
        the cached accounts stay (and the error is logged)."""
        if self.changes is None:
            return
        # One turn of the loop first: a notification already in the socket's buffer
        # (PostgreSQL) is read before this login is decided.
        await asyncio.sleep(0)
        loop = asyncio.get_running_loop()
        if self._checking is None and self.changes.maybe_changed():
            self._checking = loop.create_task(self.check_changes(), name="check-changes")
            self._checking_since = loop.time()
            self._checking.add_done_callback(self._checked)
        if self._checking is not None:
            # Bounded: a database that does not answer (an outage, SQLite's lock held
            # elsewhere) must not hold logins up; they go on with the cached accounts.
            wait = self._checking_since + ENSURE_CURRENT_SECONDS - loop.time()
            if wait > 0:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(self._checking), wait)

    def _checked(self, task: asyncio.Task[bool]) -> None:
        if self._checking is task:
            self._checking = None
        if not task.cancelled() and task.exception() is not None:
            log.warning("could not read the store's change counter: %s", task.exception())

    async def current_users(self, usernames: Iterable[str]) -> dict[str, UserRecord]:
        if self._users is None:
            return {}
        return dict(await self._users.get_users(set(usernames)))


def revoked(at_login: UserRecord, now_stored: UserRecord | None, now: datetime) -> str | None:
    """Why a user's connections must end, or None: deleted, disabled, expired, or a new
    password (whoever logged in with the old one may be who it was changed against)."""
    if now_stored is None:
        return "account deleted"
    if not now_stored.enabled:
        return "account disabled"
    if now_stored.expired(now):
        return "account expired"
    if now_stored.password_hash != at_login.password_hash:
        return "password changed"
    return None


def utc_now() -> datetime:
    return datetime.now(UTC)


async def watch(
    access: Access,
    live: Callable[[], Iterable[tuple[UserRecord, Callable[[str], None]]]],
    interval_seconds: float | None,
    clock: Callable[[], datetime] = utc_now,
    poll_seconds: float = 1.0,
    kill: Callable[[Mapping[UUID, str]], object] | None = None,
) -> None:
    """Keep ``access`` current until cancelled; database errors are logged and the next
    round tries again.

    - Whenever the store reports a change (PostgreSQL NOTIFY, or the change counter read every
      ``poll_seconds``): drop cached accounts, re-read the rules, re-check connected users.
    - Every ``interval_seconds`` (None: never): re-read the rules and the accounts of
      connected users anyway, which also catches expiry, a matter of time, not of change.

    Re-checking ends the connections of each revoked account; ``live`` lists (the account as
    it logged in, a function that ends that connection with a reason). On each change, the
    kicks of this node's connections (``access.kills``) are read and handed to ``kill``
    (audit id → who asked).
    """
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()
    feed = access.changes
    next_full_check = None if interval_seconds is None else loop.time() + interval_seconds
    # While the store is down each loop backs off and logs its outage once (socksauth/health.py).
    store = Health("re-reading rules and accounts", log)
    listening = Health("listening for changes (polling meanwhile)", log)
    while True:
        if feed is not None:
            # Cheap while the subscription is alive; after a lost connection, subscribes anew.
            try:
                await feed.listen(changed.set)
                listening.succeeded()
            except Exception as error:
                # The poll below covers it; the wait (or the store's back-off) paces retries.
                listening.failed(error)
        deadlines = [loop.time() + poll_seconds] if feed is not None else []
        if next_full_check is not None:
            deadlines.append(next_full_check)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout_at(min(deadlines) if deadlines else None):
                await changed.wait()
        changed.clear()
        try:
            connections = await _check_round(access, live, interval_seconds, next_full_check, kill)
        except Exception as error:
            # The database is away: keep the rules and connections as they are, and try
            # again after a back-off (a full check that fell due meanwhile stays due).
            await store.retry(error)
            continue
        store.succeeded()
        if connections is None:
            continue
        if next_full_check is not None and loop.time() >= next_full_check:
            assert interval_seconds is not None
            next_full_check = loop.time() + interval_seconds
        users, stored = connections
        now = clock()
        for user, end in users:
            reason = revoked(user, stored.get(user.username), now)
            if reason is not None:
                log.info("ending a connection of %r: %s", user.username, reason)
                end(reason)
        access.bandwidth.forget(stored)


async def _check_round(
    access: Access,
    live: Callable[[], Iterable[tuple[UserRecord, Callable[[str], None]]]],
    interval_seconds: float | None,
    next_full_check: float | None,
    kill: Callable[[Mapping[UUID, str]], object] | None = None,
) -> tuple[list[tuple[UserRecord, Callable[[str], None]]], dict[str, UserRecord]] | None:
    """One round of ``watch``: read the change counter (and, when it moved, the kicks of this
    node's connections, handed to ``kill``; the rules when it moved or the full check is
    due); the connected users and their stored accounts when they need a re-check, else
    None. Raises whatever the store raises."""
    stale = await access.check_changes()
    if stale and kill is not None and access.kills is not None:
        requested = await access.kills.kill_requests(access.settings.node_name)
        if requested:
            kill(requested)
    due = next_full_check is not None and asyncio.get_running_loop().time() >= next_full_check
    if not (stale or due):
        return None
    if due:
        await access.load_rules()
    if interval_seconds is None:
        return None
    connections = list(live())
    stored = await access.current_users(user.username for user, _ in connections)
    return connections, stored
