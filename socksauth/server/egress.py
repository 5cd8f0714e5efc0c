"""Egress addresses: which local address a user's outbound connections and datagrams leave from,
round robin or sticky per session key, and the check that each address is local.

A user's ``egress`` lists addresses and ``pool:NAME`` references (pools are a setting). A
request without a session key takes the user's next address in turn; a session key in the
username (``alice-session-abc123``) keeps the address it got for ``egress_session_ttl_seconds``
after its last use, on this node (addresses belong to a host: another node has its own).
"""

from __future__ import annotations

import ipaddress
import re
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from socksauth.config import EgressPool
from socksauth.logs import get_logger
from socksauth.store.interfaces import UserRecord

log = get_logger("egress")

POOL_PREFIX = "pool:"
# What a session key may be: crawler tools send short tokens; anything else is part of the
# account's name.
_SESSION_KEY = re.compile(r"[A-Za-z0-9_.]{1,64}")
# Sessions remembered at most; the least recently used is forgotten first.
MAX_SESSIONS = 100_000


def split_session(username: str, separator: str) -> tuple[str, str | None]:
    """(account name, session key or None): ``alice-session-abc123`` → (``alice``,
    ``abc123``) with separator ``-session-``; a name without a valid key is the account's."""
    if not separator:
        return username, None
    account, found, key = username.partition(separator)
    if found and account and _SESSION_KEY.fullmatch(key):
        return account, key
    return username, None


def family_of(address: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


@dataclass(frozen=True, slots=True)
class Egress:
    """The addresses a request may leave from, ``first`` preferred: per address family, the
    first address of that family from ``first`` on."""

    addresses: tuple[str, ...]
    first: int = 0

    def source_for(self, family: int) -> str | None:
        count = len(self.addresses)
        for step in range(count):
            address = self.addresses[(self.first + step) % count]
            if family_of(address) == family:
                return address
        return None

    @property
    def chosen(self) -> str | None:
        return self.addresses[self.first] if self.addresses else None


def parse_entry(text: str) -> str:
    """A user's egress entry as stored: an IP address (normalised) or ``pool:NAME``.

    Raises:
        ValueError: neither.
    """
    if text.startswith(POOL_PREFIX) and text[len(POOL_PREFIX) :]:
        return text
    return str(ipaddress.ip_address(text))


class EgressSelector:
    """Chooses each request's egress; one per server, its pools replaced by a reload."""

    def __init__(
        self,
        pools: Iterable[EgressPool] = (),
        session_ttl_seconds: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._pools: Mapping[str, tuple[str, ...]] = {}
        self._ttl = session_ttl_seconds
        self.use_settings(pools, session_ttl_seconds)
        self._turns: dict[str, int] = {}  # username → next round-robin index
        # (username, session key) → (address, until)
        self._sessions: OrderedDict[tuple[str, str], tuple[str, float]] = OrderedDict()

    def use_settings(self, pools: Iterable[EgressPool], session_ttl_seconds: float) -> None:
        self._pools = {pool.name: pool.addresses for pool in pools}
        self._ttl = session_ttl_seconds

    def addresses(self, entries: Iterable[str]) -> tuple[str, ...]:
        """``entries`` with pools expanded (an unknown pool adds nothing), each address once."""
        found: list[str] = []
        for entry in entries:
            if entry.startswith(POOL_PREFIX):
                found.extend(self._pools.get(entry[len(POOL_PREFIX) :], ()))
            else:
                found.append(entry)
        return tuple(dict.fromkeys(found))

    def choose(self, user: UserRecord | None, session: str | None) -> Egress | None:
        """The egress for one request of ``user``; None when it has none (the system picks).
        An Egress without addresses means all of the user's pools are unknown."""
        if user is None or not user.egress:
            return None
        addresses = self.addresses(user.egress)
        if not addresses:
            return Egress(())
        if session is None:
            return Egress(addresses, self._next_turn(user.username, len(addresses)))
        now = self._clock()
        key = (user.username, session)
        kept = self._sessions.get(key)
        if kept is not None and kept[1] > now and kept[0] in addresses:
            first = addresses.index(kept[0])
        else:
            first = self._next_turn(user.username, len(addresses))
        self._sessions[key] = (addresses[first], now + self._ttl)
        self._sessions.move_to_end(key)
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return Egress(addresses, first)

    def _next_turn(self, username: str, count: int) -> int:
        turn = self._turns.get(username, 0) % count
        self._turns[username] = turn + 1
        return turn


def not_local(addresses: Iterable[str]) -> dict[str, str]:
    """The addresses among ``addresses`` this host cannot send from, with the reason: each is
    tried with a bind to port 0 (no packet is sent)."""
    failures = {}
    for address in addresses:
        try:
            with socket.socket(family_of(address), socket.SOCK_DGRAM) as sock:
                sock.bind((address, 0))
        except OSError as error:
            failures[address] = error.strerror or str(error)
    return failures


def check_local(pools: Iterable[EgressPool], entries: Iterable[str]) -> list[str]:
    """Warnings (also logged) for every egress address that is not local and every pool that
    users name but the settings lack; at start and at each reload."""
    selector = EgressSelector(pools)
    known = {pool.name for pool in pools}
    warnings = []
    entries = set(entries)
    for entry in sorted(entries):
        if entry.startswith(POOL_PREFIX) and entry[len(POOL_PREFIX) :] not in known:
            warnings.append(f"egress {entry}: no such pool (egress_pool)")
    addresses = set(selector.addresses(entries))
    for pool in pools:
        addresses.update(pool.addresses)
    for address, reason in sorted(not_local(addresses).items()):
        warnings.append(f"egress address {address} is not local ({reason}); requests that "
                        "choose it fail with reply 0x01")  # fmt: skip
    for warning in warnings:
        log.warning("%s", warning)
    return warnings
