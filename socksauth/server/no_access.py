"""NO_ACCESS: the Access of a server that applies no destination policy and no limits.

A ProxyServer built without an Access hands this one shared object to each of its clients,
so a client asks its access the same questions either way instead of checking for None.
Each part answers as if nothing were configured: every target allowed, every client started
at once, no quota, no per-user count, no bandwidth limit, no egress address, no memory cap.
"""

from __future__ import annotations

from socksauth.protocol import Command
from socksauth.server.access import Access, Bandwidth
from socksauth.server.egress import Egress, EgressSelector
from socksauth.server.limits import (
    ClientSlot,
    ConnectionLimits,
    TokenBucket,
    UserConnections,
    UserLease,
)
from socksauth.server.policy import DestinationPolicy, IPAddress, Verdict
from socksauth.server.quota import Metered, QuotaTracker
from socksauth.server.relay import RelayBudget
from socksauth.store.interfaces import UserRecord

_ALLOWED = Verdict(allowed=True, reason="no policy")


class _AllowEverything(DestinationPolicy):
    def __init__(self) -> None:
        super().__init__()

    def check_request(
        self, username: str | None, command: Command, name: str | None, port: int | None
    ) -> Verdict | None:
        return None

    def check_address(
        self,
        username: str | None,
        command: Command,
        address: IPAddress,
        port: int,
        name: str | None = None,
    ) -> Verdict:
        return _ALLOWED

    def check_host(self, username: str | None, command: Command, host: str, port: int) -> Verdict:
        return _ALLOWED


class _StartedSlot(ClientSlot):
    """The one slot every client gets: started, counted nowhere."""

    __slots__ = ()

    def __init__(self) -> None:  # not ClientSlot's: there are no counts to leave
        self.started = True

    def leave_handshake(self) -> None:
        pass

    def release(self) -> None:
        pass


class _NoCaps(ConnectionLimits):
    def __init__(self) -> None:  # not ConnectionLimits': nothing is counted
        self._slot = _StartedSlot()

    def admit(self, client_host: str) -> ClientSlot:
        return self._slot


class _UncountedLease(UserLease):
    __slots__ = ()

    def __init__(self) -> None:  # not UserLease's: no counter to release into
        pass

    def release(self) -> None:
        pass


class _NoUserLimits(UserConnections):
    def __init__(self) -> None:  # not UserConnections': nothing is counted or shared
        self._lease = _UncountedLease()

    async def acquire(self, username: str, limit: int | None) -> UserLease | None:
        return self._lease


class _NoQuotas(QuotaTracker):
    def __init__(self) -> None:  # not QuotaTracker's: nothing is tracked or flushed
        pass

    async def admit(self, user: UserRecord) -> bool:
        return True

    def finished(self, client: Metered) -> None:
        pass


class _NoBandwidthLimits(Bandwidth):
    def buckets(self, user: UserRecord | None) -> tuple[TokenBucket, TokenBucket] | None:
        return None


class _NoEgress(EgressSelector):
    def choose(self, user: UserRecord | None, session: str | None) -> Egress | None:
        return None


class _NoAccess(Access):
    def __init__(self) -> None:  # not Access's: no settings, no store, nothing to watch
        self.policy = _AllowEverything()
        self.connections = _NoCaps()
        self.user_connections = _NoUserLimits()
        self.quotas = _NoQuotas()
        self.bandwidth = _NoBandwidthLimits()
        self.egress = _NoEgress()
        self.relay_budget = RelayBudget(None)


NO_ACCESS: Access = _NoAccess()
