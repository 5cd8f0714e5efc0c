"""What the rest of socksauth needs from storage, as small Protocols and plain records.

No SQLAlchemy here: this is the only store module that auth, audit and server import.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

from socksauth.connection_record import Outcome


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class UserRecord:
    """An account as stored. ``password_hash`` is a passlib hash string, never a password."""

    username: str
    password_hash: str
    enabled: bool
    created_at: datetime
    updated_at: datetime
    last_login_at: datetime | None
    # None: no limit / never expires.
    max_connections: int | None = None
    max_bandwidth_bytes_per_second: int | None = None
    expires_at: datetime | None = None
    # Bytes both ways per quota_period ("day", "week", "month" or "Nd" rolling); None: none.
    quota_bytes: int | None = None
    quota_period: str | None = None
    # Networks (CIDR text) the user may log in from; empty: anywhere.
    client_networks: tuple[str, ...] = ()
    # Local addresses (or "pool:NAME") the user's outbound traffic leaves from; empty: any.
    egress: tuple[str, ...] = ()
    # May open the dashboard with HTTP Basic.
    is_admin: bool = False

    def expired(self, now: datetime) -> bool:
        """Whether the account's expiry has passed at ``now`` (aware, UTC)."""
        return self.expires_at is not None and now >= self.expires_at

    def __repr__(self) -> str:
        return (
            f"UserRecord(username={self.username!r}, enabled={self.enabled}, "
            f"created_at={self.created_at!r}, last_login_at={self.last_login_at!r})"
        )


class UserLookup(Protocol):
    """What the authenticator reads and writes on the hot path."""

    async def get_user(self, username: str) -> UserRecord | None:
        """The account named ``username`` (exact match), or None."""
        ...

    async def replace_password_hash(self, username: str, old_hash: str, new_hash: str) -> None:
        """Store a rehashed password, only if the stored hash is still ``old_hash``."""
        ...

    async def record_logins(self, logins: Mapping[str, datetime]) -> None:
        """Set last_login_at for each username (batched by the caller)."""
        ...


class UserStore(UserLookup, Protocol):
    """Account administration, for the CLI."""

    async def add_user(self, username: str, password_hash: str) -> UserRecord:
        """Create an enabled account; UserError if the name is taken."""
        ...

    async def set_password_hash(self, username: str, password_hash: str) -> None:
        """Replace the password hash; UserError if there is no such user."""
        ...

    async def set_enabled(self, username: str, enabled: bool) -> None:
        """Enable or disable; UserError if there is no such user."""
        ...

    async def delete_user(self, username: str) -> None:
        """Delete the account; UserError if there is no such user."""
        ...

    async def list_users(self) -> Sequence[UserRecord]:
        """Every account, ordered by username."""
        ...

    async def set_limits(
        self,
        username: str,
        *,
        max_connections: int | None,
        max_bandwidth_bytes_per_second: int | None,
        expires_at: datetime | None,
    ) -> None:
        """Replace the three limits (None: none); UserError if there is no such user."""
        ...

    async def set_quota(
        self, username: str, quota_bytes: int | None, quota_period: str | None
    ) -> None:
        """Replace the traffic quota (None: none); UserError if there is no such user."""
        ...

    async def set_client_networks(self, username: str, networks: Sequence[str]) -> None:
        """Replace the networks the user may log in from (empty: anywhere)."""
        ...

    async def set_egress(self, username: str, egress: Sequence[str]) -> None:
        """Replace the user's egress addresses and pools (empty: the system's choice)."""
        ...


class LiveUsers(Protocol):
    """What the server re-reads periodically to end the tunnels of changed accounts."""

    async def get_users(self, usernames: Collection[str]) -> Mapping[str, UserRecord]:
        """The accounts among ``usernames`` that exist, by name, in one query."""
        ...


class ChangeFeed(Protocol):
    """How a node learns that accounts or rules changed, on this node or any other."""

    async def revision(self) -> int:
        """A counter that every committed change of an account or a rule increases."""
        ...

    async def listen(self, on_change: Callable[[], None]) -> bool:
        """Have ``on_change`` called soon after each change; False when this store cannot
        tell (then poll ``revision``). Call again to re-establish a lost subscription."""
        ...

    def maybe_changed(self) -> bool:
        """Without a query: whether a change may have been committed since the last call
        (False means certainly not, or that changes are pushed through ``listen``)."""
        ...


class ConnectionLeases(Protocol):
    """Per-user connection counts shared by every node on the database."""

    async def acquire(self, username: str, limit: int) -> bool:
        """Count one more connection of ``username`` unless all nodes have ``limit``."""
        ...

    def release(self, username: str) -> None:
        """Count one fewer (written in the background)."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class NewRule:
    """A destination rule as an administrator writes it; None criteria match anything.

    ``action`` is "allow" or "deny"; ``command`` "connect", "bind" or "udp"; ``cidr`` an IP
    network; ``domain`` a name or ``*.suffix``. server/policy.py gives them their meaning.
    """

    action: str
    username: str | None = None
    cidr: str | None = None
    domain: str | None = None
    port_min: int | None = None
    port_max: int | None = None
    command: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleRecord(NewRule):
    """A stored rule: evaluated in ``position`` order (ties by ``id``)."""

    id: int
    position: int
    created_at: datetime


class RuleSource(Protocol):
    """Where the server reads its destination rules."""

    async def list_rules(self) -> Sequence[RuleRecord]:
        """Every rule, in evaluation order."""
        ...


class RuleStore(RuleSource, Protocol):
    """Rule administration, for the CLI."""

    async def add_rule(self, rule: NewRule, position: int | None = None) -> RuleRecord:
        """Store ``rule`` at ``position`` (rules at or after it move down), or last."""
        ...

    async def delete_rule(self, rule_id: int) -> None:
        """Delete a rule; UserError if there is no rule with that id."""
        ...


# What ``AuditQuery.outcome`` matches for rows still open (their outcome column is NULL).
OPEN = "open"
# An entry's ``protocol``: what the client spoke on the shared port.
SOCKS5 = "socks5"
HTTP = "http"
PROTOCOLS = (SOCKS5, HTTP)
# The outcomes counted as failed logins in the stats: a wrong password, an unknown or disabled
# user, a throttled or locked-out login, a login from outside the user's networks. Not
# STORE_UNAVAILABLE: the database was down, not the client's doing.
FAILED_LOGIN_OUTCOMES = tuple(
    outcome.value
    for outcome in (
        Outcome.AUTH_FAILED,
        Outcome.THROTTLED,
        Outcome.LOCKED_OUT,
        Outcome.WRONG_NETWORK,
    )
)


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditEntry:
    """One row of the audit: a tunnel, association or binding, or a failed handshake.

    ``ended_at`` and ``outcome`` are None while the connection is open. ``command`` is None for
    a handshake that never reached the request (a failed login, no acceptable method, a
    protocol error). Datetimes are aware, UTC. No password, ever.
    """

    id: UUID
    node: str
    client_host: str
    client_port: int
    started_at: datetime
    username: str | None = None
    command: str | None = None
    target_host: str | None = None
    target_port: int | None = None
    dialed: str | None = None
    reply: int | None = None
    outcome: str | None = None
    ended_at: datetime | None = None
    duration_seconds: float | None = None
    bytes_from_client: int = 0
    bytes_to_client: int = 0
    datagrams_from_client: int = 0
    datagrams_to_client: int = 0
    protocol: str = SOCKS5  # or HTTP: what the client spoke
    requests: int = 0  # HTTP: absolute-form requests forwarded (0 for tunnels)
    # Interim counts of an open connection: when its byte counts were taken, and the bytes
    # per second each way since the previous interim. An open entry with ``updated_at``
    # updates the counts of its row; one without only opens it.
    updated_at: datetime | None = None
    rate_from_client: float | None = None
    rate_to_client: float | None = None
    # Who asked for a kick (`socksauth sessions kill`): read from the row, never written by
    # the audit.
    killed_by: str | None = None

    @property
    def is_open(self) -> bool:
        return self.ended_at is None

    @property
    def is_interim(self) -> bool:
        return self.ended_at is None and self.updated_at is not None


class AuditSink(Protocol):
    """Where the audit log writes: idempotent, so a batch may be retried or replayed."""

    async def write_batch(self, entries: Sequence[AuditEntry]) -> None:
        """Upsert by id in one transaction: an open entry never overwrites a row that exists
        (it may have been completed already); a finished entry inserts or completes the row.

        Raises:
            DatabaseError: the database is unreachable or refused the batch.
        """
        ...

    async def close_interrupted(self, node: str, at: datetime) -> int:
        """Close ``node``'s open rows that started before ``at`` (a crashed process's) as
        ``Outcome.INTERRUPTED`` at ``at``; how many."""
        ...


class SortOrder(enum.Enum):
    NEWEST_FIRST = "newest"
    OLDEST_FIRST = "oldest"


@dataclass(frozen=True, slots=True, kw_only=True)
class AuditQuery:
    """Filters for listing audit entries; None means "any"."""

    username: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    target: str | None = None  # substring of the requested host or the dialled address
    outcome: str | None = None  # an Outcome value, or OPEN
    protocol: str | None = None  # one of PROTOCOLS
    limit: int | None = 100
    order: SortOrder = SortOrder.NEWEST_FIRST


@dataclass(frozen=True, slots=True, kw_only=True)
class UserStats:
    """One user's activity in a period. ``username`` None: clients that never authenticated."""

    username: str | None
    connections: int  # entries that reached the request stage
    failed_logins: int
    bytes_from_client: int
    bytes_to_client: int
    tunnel_seconds: float  # of the finished connections
    last_seen: datetime


class AuditReader(Protocol):
    """The audit as the CLI reads and prunes it."""

    async def find_entries(self, query: AuditQuery) -> Sequence[AuditEntry]:
        """Entries matching ``query``, ordered by start time."""
        ...

    async def user_stats(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        protocol: str | None = None,
    ) -> Sequence[UserStats]:
        """Per-user totals of entries started in [since, until) (of one protocol, if given),
        ordered by username."""
        ...

    async def prune(self, before: datetime) -> int:
        """Delete finished entries that started before ``before``; how many were deleted."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ThrottlePair:
    """One (username, address) pair of the login throttle as stored for every node. Times
    are seconds since the epoch; ``recent`` the keyed HMACs of its last wrong passwords."""

    username: str
    address: str
    failures: int
    last_failure_at: float
    locked_until: float
    lockouts: int
    day_failures: int
    day_started_at: float
    recent: tuple[bytes, ...] = ()
    # The last successful login from the address (familiar standing); 0: none. In an
    # update: -1 takes the standing away.
    familiar_at: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ThrottleUpdate:
    """What one process adds to a pair: failures counted since its last write (added to
    the stored count, so concurrent writers never lose one), and its view of the rest."""

    pair: ThrottlePair  # failures / day_failures: the ones added, not the totals
    locked: bool = False  # this process has just locked the pair: tell the others
    succeeded: bool = False  # a success: the pair starts afresh, familiar since familiar_at


@dataclass(frozen=True, slots=True, kw_only=True)
class ThrottleEvent:
    """A lockout ("lock": username, network = the address) or a clear ("clear": either or
    both may be None, meaning any) that every node applies."""

    id: int
    kind: str
    username: str | None
    network: str | None


class ThrottleStore(Protocol):
    """The login throttle's state shared through the database (store/throttle.py)."""

    async def secret(self) -> bytes:
        """The key of the throttle's HMACs, the same for every node."""
        ...

    async def record(
        self, updates: Sequence[ThrottleUpdate], now: float, window_seconds: float
    ) -> Sequence[ThrottlePair]:
        """One transaction: each update is one atomic upsert (failures added; a pair quiet
        for ``window_seconds`` starts afresh; a success resets it), and a "lock" event for
        each lock; the pairs as now stored."""
        ...

    async def pairs(self, keys: Collection[tuple[str, str]]) -> Sequence[ThrottlePair]: ...

    async def active(self, now: float, window_seconds: float) -> Sequence[ThrottlePair]:
        """Pairs locked now or with a failure within the window."""
        ...

    async def events_after(self, event_id: int) -> Sequence[ThrottleEvent]: ...

    async def last_event_id(self) -> int: ...

    async def clear(self, username: str | None, network: str | None) -> int:
        """Delete the matching pairs and log a "clear" event; how many were deleted."""
        ...

    async def purge(
        self, now: float, window_seconds: float, familiar_seconds: float, max_rows: int
    ) -> int:
        """Delete pairs quiet for the window, not locked and not familiar, then the oldest
        beyond ``max_rows``, and events older than an hour; how many pairs went."""
        ...


class TrafficUsage(Protocol):
    """Bytes relayed per user, counted by every node into the database (store/usage.py)."""

    async def add(self, node: str, bucket_start: datetime, usage: Mapping[str, int]) -> None:
        """Add ``usage`` (bytes by username) to ``node``'s counts for the hour at
        ``bucket_start``, in one transaction."""
        ...

    async def totals(self, since: Mapping[str, datetime]) -> Mapping[str, int]:
        """For each username, the bytes of every node in the hours from ``since[username]``
        on (users without any: absent), in one query."""
        ...

    async def prune(self, before: datetime) -> int:
        """Delete the hours before ``before``; how many rows."""
        ...


class EgressSource(Protocol):
    """Where the server finds the egress addresses users were given (checked at start)."""

    async def egress_entries(self) -> set[str]:
        """Every distinct egress entry of any user."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeRecord:
    """A node (one process) as it last reported itself; ``alive`` when its heartbeat is
    recent enough that its open connections count as live."""

    name: str
    started_at: datetime
    heartbeat_at: datetime
    connections: int
    version: str | None
    alive: bool


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionQuery:
    """Which live sessions: None means "any"."""

    username: str | None = None
    node: str | None = None
    limit: int | None = None  # at most this many, the oldest first


@dataclass(frozen=True, slots=True, kw_only=True)
class UserActivity:
    """One user now and today, for `socksauth top`: open connections on live nodes, their
    current rates, bytes of the connections started since ``since``, failed logins."""

    username: str
    open_connections: int
    rate_from_client: float
    rate_to_client: float
    bytes_from_client: int
    bytes_to_client: int
    failed_logins: int


class KillRequests(Protocol):
    """What a node reads to learn which of its connections an administrator kicked."""

    async def kill_requests(self, node: str) -> Mapping[UUID, str]:
        """Open connections of ``node`` with a kick asked for: id → who asked."""
        ...


class SessionReader(Protocol):
    """Live sessions and nodes, cluster-wide, for the CLI, `top` and the dashboard."""

    async def live_sessions(self, query: SessionQuery) -> Sequence[AuditEntry]:
        """Open connections on live nodes, oldest first."""
        ...

    async def nodes(self) -> Sequence[NodeRecord]:
        """Every node that has a row, by name."""
        ...

    async def user_activity(self, since: datetime) -> Sequence[UserActivity]:
        """Per user: live connections and rates, and totals since ``since``; by username."""
        ...

    async def request_kill(
        self,
        *,
        by: str,
        ids: Collection[UUID] = (),
        username: str | None = None,
        client_networks: Collection[str] = (),
    ) -> Sequence[AuditEntry]:
        """Ask the nodes to end these live connections (``ids``, or those of ``username``,
        from ``client_networks`` when given); the ones asked for. The nodes hear of it
        through the change feed."""
        ...

    async def find_open(self, ids: Collection[UUID]) -> Sequence[AuditEntry]:
        """Which of ``ids`` are still open rows (on any node)."""
        ...

    async def traffic(
        self, since: datetime, until: datetime, bucket_seconds: int
    ) -> Mapping[str, Sequence[tuple[int, int]]]:
        """Per user, bytes (from client, to client) in each bucket of [since, until); a
        connection's bytes are spread evenly over its life (what the audit knows)."""
        ...


class AdminCredentials(Protocol):
    """Dashboard tokens (stored as SHA-256) and the accounts marked admin."""

    async def add_token(self, name: str, token_hash: str) -> None:
        """Store a token's hash under ``name``; UserError if the name is taken."""
        ...

    async def delete_token(self, name: str) -> None:
        """UserError if there is no token named ``name``."""
        ...

    async def token_names(self) -> Sequence[tuple[str, datetime]]:
        """(name, created) of every token, by name."""
        ...

    async def token_name(self, token_hash: str) -> str | None:
        """The name of the token with this hash, or None."""
        ...

    async def set_admin(self, username: str, admin: bool) -> None:
        """Mark or unmark an account as admin; UserError if there is no such user."""
        ...
