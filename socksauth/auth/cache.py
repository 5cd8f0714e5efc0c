"""VerificationCache: remembers recent successful password checks without keeping passwords.

An argon2 verification costs tens of milliseconds of CPU and ~19 MiB; a client that opens a
connection per request (crawlers, curl loops) would pay that every time. A success is cached
under HMAC-SHA256(process secret, username ‖ stored hash ‖ password):

- the password is never stored, only a keyed digest that dies with the process;
- the stored hash is part of the key, so a password change misses at once (no invalidation);
- the account's state (enabled, …) is not cached: the caller checks it on every login;
- only successes are cached, so wrong passwords and unknown users always cost a full
  verification and the timing of a refusal does not change.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable

DEFAULT_MAX_ENTRIES = 10_000
DEFAULT_TTL_SECONDS = 300.0


class VerificationCache:
    """A bounded, expiring set of (username, hash, password) triples known to verify."""

    __slots__ = ("_clock", "_entries", "_max_entries", "_secret", "_ttl", "hits", "misses")

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        ttl_seconds: float = DEFAULT_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._secret = secrets.token_bytes(32)
        self._entries: OrderedDict[bytes, float] = OrderedDict()
        self._max_entries = max_entries
        self._ttl = ttl_seconds
        self._clock = clock
        self.hits = 0
        self.misses = 0

    def _key(self, username: str, password_hash: str, password: str) -> bytes:
        message = b"\0".join(
            part.encode("utf-8", "surrogateescape") for part in (username, password_hash, password)
        )
        return hmac.digest(self._secret, message, hashlib.sha256)

    def contains(self, username: str, password_hash: str, password: str) -> bool:
        key = self._key(username, password_hash, password)
        expires = self._entries.get(key)
        if expires is None or expires <= self._clock():
            if expires is not None:
                del self._entries[key]
            self.misses += 1
            return False
        self._entries.move_to_end(key)
        self.hits += 1
        return True

    def add(self, username: str, password_hash: str, password: str) -> None:
        key = self._key(username, password_hash, password)
        self._entries[key] = self._clock() + self._ttl
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
