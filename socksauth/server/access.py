"""Access: the destination policy and the limits one server applies to all its clients, and
the periodic re-read of rules and connected users' accounts that keeps them current."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime

from socksauth.config import Settings
from socksauth.logs import get_logger
from socksauth.server.limits import (
    ConnectionCaps,
    ConnectionLimits,
    TokenBucket,
    UserConnections,
)
from socksauth.server.policy import COMMAND_NAMES, Action, DestinationPolicy, Rule
from socksauth.store.interfaces import LiveUsers, RuleRecord, RuleSource, UserRecord

log = get_logger("access")


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
    ) -> None:
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
        self.user_connections = UserConnections()
        self.bandwidth = Bandwidth()
        self._rules = rules
        self._users = users
        self._own_endpoints: tuple[tuple[str, int], ...] = ()

    def set_own_endpoints(self, endpoints: Sequence[tuple[str, int]]) -> None:
        """The listen addresses actually bound: targets the proxy must not loop back to."""
        self._own_endpoints = tuple(endpoints)
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
            own_endpoints=self._own_endpoints,
        )

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
    interval_seconds: float,
    clock: Callable[[], datetime] = utc_now,
) -> None:
    """Every ``interval_seconds``: re-read the rules and the accounts of connected users, and
    end the connections of each account that was revoked. ``live`` lists (the account as it
    logged in, a function that ends that connection with a reason). Runs until cancelled;
    database errors are logged and the next round tries again."""
    while True:
        await asyncio.sleep(interval_seconds)
        try:
            await access.load_rules()
            connections = list(live())
            stored = await access.current_users(user.username for user, _ in connections)
        except Exception:
            # The database is away: keep the rules and connections as they are, say so once
            # a round, and try again.
            log.exception("could not re-read rules and accounts")
            continue
        now = clock()
        for user, end in connections:
            reason = revoked(user, stored.get(user.username), now)
            if reason is not None:
                log.info("ending a connection of %r: %s", user.username, reason)
                end(reason)
        access.bandwidth.forget(stored)
