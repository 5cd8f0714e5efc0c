"""UserCache: account records kept in memory until the store reports a change.

With it a login costs no database round trip when the account was seen before: the node
drops every cached record as soon as its change feed (server/access.py) reports that
accounts or rules changed, on this node or any other, so an account change applies to new
logins within the feed's delay (milliseconds with PostgreSQL NOTIFY, one poll otherwise).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime

from socksauth.store.interfaces import UserLookup, UserRecord

# Unknown names are cached too (a client retrying a wrong name should not cost a query each
# time); the bound keeps a scan of random names from growing the process.
MAX_ENTRIES = 50_000
# Store lookups in flight at once. A storm of cold logins (or every login right after a change
# emptied the cache) would otherwise send hundreds of queries at once, and their answers
# would then be handled back to back on the event loop: tens of milliseconds in which no open
# tunnel moves. Two at a time keep that to a lookup or two ahead of any other callback, and
# cost the logins nothing: the verification that follows is far slower than a lookup (bench
# storm on PostgreSQL, 200 cold logins: open tunnels' echo p99 8.6 ms unbounded, 5.6 ms with 4
# at once, 4.3 ms with 2; the storm took 3.1 s each time).
LOOKUPS_AT_ONCE = 2


class UserCache:
    """A UserLookup in front of another, for the login path."""

    __slots__ = ("_generation", "_lookups", "_max_entries", "_records", "_users", "before_lookup")

    def __init__(
        self,
        users: UserLookup,
        max_entries: int = MAX_ENTRIES,
        lookups_at_once: int = LOOKUPS_AT_ONCE,
    ) -> None:
        self._users = users
        self._lookups = asyncio.Semaphore(lookups_at_once)
        self._max_entries = max_entries
        self._records: dict[str, UserRecord | None] = {}
        self._generation = 0
        # Awaited before each lookup (Access.ensure_current): makes sure a change committed
        # a moment ago has invalidated this cache before a login trusts it.
        self.before_lookup: Callable[[], Awaitable[None]] | None = None

    async def get_user(self, username: str) -> UserRecord | None:
        if self.before_lookup is not None:
            await self.before_lookup()
        try:
            return self._records[username]
        except KeyError:
            pass
        async with self._lookups:
            try:  # another login of the same name may have looked it up meanwhile
                return self._records[username]
            except KeyError:
                pass
            generation = self._generation
            record = await self._users.get_user(username)
            # A change reported while the query ran may have come after it read the row:
            # keep the answer only when nothing was reported meanwhile.
            if generation == self._generation:
                if len(self._records) >= self._max_entries:
                    del self._records[next(iter(self._records))]  # the oldest entry
                self._records[username] = record
            return record

    def invalidate(self) -> None:
        """Forget every record: the store says something changed."""
        self._records.clear()
        self._generation += 1

    def __len__(self) -> int:
        return len(self._records)

    async def replace_password_hash(self, username: str, old_hash: str, new_hash: str) -> None:
        self._records.pop(username, None)
        self._generation += 1
        await self._users.replace_password_hash(username, old_hash, new_hash)

    async def record_logins(self, logins: Mapping[str, datetime]) -> None:
        # last_login_at is not something a login decision reads: the cache keeps its records.
        await self._users.record_logins(logins)
