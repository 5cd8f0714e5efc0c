"""The connection record: what one client did and how it ended (the outcome vocabulary every
layer uses, the store's column included), and the observers told about it."""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol
from uuid import UUID

from socksauth.protocol import Address, Command, Reply
from socksauth.protocol.detect import Kind


class Outcome(enum.Enum):
    """How a client connection ended, as logged and audited."""

    CLOSED = "closed"
    CLIENT_ERROR = "client_error"
    TARGET_ERROR = "target_error"
    SHUTDOWN = "shutdown"
    NO_ACCEPTABLE_METHOD = "no_acceptable_method"
    AUTH_FAILED = "auth_failed"
    THROTTLED = "throttled"  # login failed after a throttle delay, or too many were delayed
    LOCKED_OUT = "locked_out"  # login refused unverified: the (user, address) pair is locked
    PROTOCOL_ERROR = "protocol_error"
    HANDSHAKE_TIMEOUT = "handshake_timeout"
    CLIENT_GONE = "client_gone"  # closed during the handshake
    UNSUPPORTED = "unsupported"
    CONNECT_FAILED = "connect_failed"
    BIND_FAILED = "bind_failed"  # BIND: could not listen, or nobody connected in time
    IDLE_TIMEOUT = "idle_timeout"  # nothing moved for idle_timeout_seconds (UDP: udp_…)
    DENIED = "denied"  # the destination policy refused the request (reply 0x02)
    LIMIT_EXCEEDED = "limit_exceeded"  # the user's max_connections were in use (reply 0x02)
    REVOKED = "revoked"  # ended because the account was disabled, deleted, expired or changed
    REFUSED = "refused"  # not admitted at accept: a cap, or not an allowed client network
    STORE_UNAVAILABLE = "store_unavailable"  # login not checkable: the store is down (0x01)
    AUTH_REQUIRED = "auth_required"  # HTTP: no credentials, answered 407 (not audited)
    QUOTA_EXCEEDED = "quota_exceeded"  # traffic quota used up: request refused (0x02) or ended
    WRONG_NETWORK = "wrong_network"  # right password, client outside the user's networks
    KILLED = "killed"  # ended by `socksauth sessions kill` (the audit row says who asked)
    ERROR = "error"
    # Written by the store, never by a server: a row a dead process left open (at next start).
    INTERRUPTED = "interrupted"


@dataclass(slots=True, kw_only=True)
class ConnectionRecord:
    """What one client did, filled in as it happens: the log line and the audit read it."""

    client_host: str
    client_port: int
    started_at: datetime  # wall clock, UTC, for the audit
    started: float  # monotonic, for the duration
    ended_at: datetime | None = None
    duration_seconds: float = 0.0
    username: str | None = None
    command: Command | None = None
    target: Address | None = None  # as the client asked for it
    dialed: str | None = None  # the address actually connected to (host:port)
    reply: Reply | None = None
    outcome: Outcome = Outcome.ERROR
    bytes_from_client: int = 0
    bytes_to_client: int = 0
    datagrams_from_client: int = 0  # UDP ASSOCIATE only
    datagrams_to_client: int = 0
    audit_id: UUID | None = None  # set by the observer that writes the audit row
    datagrams_dropped: int = 0  # UDP: wrong source, FRAG != 0, malformed, not allowed, …
    protocol: Kind = Kind.SOCKS5  # or HTTP: what the client spoke (its first byte)
    requests: int = 0  # HTTP absolute-form requests forwarded on this connection
    # While a tunnel or association runs: its byte counts so far (from, to the client), for
    # the audit's interim updates. Read every few seconds, never per byte.
    live_counts: Callable[[], tuple[int, int]] | None = None

    @property
    def client(self) -> str:
        host = f"[{self.client_host}]" if ":" in self.client_host else self.client_host
        return f"{host}:{self.client_port}"


class ConnectionObserver(Protocol):
    """Told when a tunnel, association or binding opens and when a client is done (the audit).

    Both are called on the event loop and must neither block nor raise.
    """

    def opened(self, record: ConnectionRecord) -> None: ...

    def finished(self, record: ConnectionRecord) -> None: ...


class NoObserver:
    """The observer when nothing is audited (tests and benchmarks of the proxy alone)."""

    def opened(self, record: ConnectionRecord) -> None:
        pass

    def finished(self, record: ConnectionRecord) -> None:
        pass


class Observers:
    """Several observers as one (the audit and the metrics), told in the order given."""

    __slots__ = ("_observers",)

    def __init__(self, *observers: ConnectionObserver) -> None:
        self._observers = observers

    def opened(self, record: ConnectionRecord) -> None:
        for observer in self._observers:
            observer.opened(record)

    def finished(self, record: ConnectionRecord) -> None:
        for observer in self._observers:
            observer.finished(record)
