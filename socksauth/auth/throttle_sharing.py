"""SharedThrottle: one process's LoginThrottle kept in step with every other process's
through the store, so the allowance is the same however many workers and nodes serve.

- The login path never waits for the database: the throttle decides from memory, and what
  changed is queued here and written every ``flush_seconds`` in one transaction, one atomic
  upsert per pair that adds this process's new failures to the stored count. The stored
  totals come back and are merged (every process's failures, lockouts, the last wrong
  passwords' HMACs, familiar standing), so the next decision counts all of them. A flood
  costs the database at most ``1 / flush_seconds`` transactions a second, of at most
  ``max_batch`` pairs each, however many guesses arrive.
- A lockout is also logged as an event, and `socksauth throttle clear`, `user passwd` and
  `user enable` log a clear; the event's trigger bumps the store revision, so every node
  reads the new events when it hears of a change (PostgreSQL NOTIFY: milliseconds; SQLite:
  the change poll) and applies them.
- The login path never waits for the store: while it is slow or down the process keeps
  counting on its own (neither failing open nor refusing everyone), counts a throttle store
  error for each failed write or one slower than ``timeout_seconds``, and writes what it
  owes once the store answers (at most ``max_pending`` pairs).
- Every ``purge_seconds`` quiet rows are purged and the row count capped.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from socksauth.auth.throttle import DAY_SECONDS, LoginThrottle, PairChange, PairState
from socksauth.config import key_in_network
from socksauth.health import stop_task
from socksauth.logs import get_logger
from socksauth.store.interfaces import ThrottlePair, ThrottleStore, ThrottleUpdate

log = get_logger("throttle")

FLUSH_SECONDS = 0.1
TIMEOUT_SECONDS = 1.0
PURGE_SECONDS = 60.0
MAX_BATCH = 500
MAX_PENDING = 10_000
MAX_ROWS = 100_000
# A familiar mark is written again when the one written is older than this.
FAMILIAR_REFRESH_SECONDS = DAY_SECONDS


@dataclass(slots=True)
class _Pending:
    counted: int = 0
    locked: bool = False
    demoted: bool = False
    succeeded: bool = False


class SharedThrottle:
    """Writes ``throttle``'s changes to ``store`` in batches and applies other processes'."""

    def __init__(
        self,
        throttle: LoginThrottle,
        store: ThrottleStore,
        *,
        clock: Callable[[], float] = time.time,
        flush_seconds: float = FLUSH_SECONDS,
        timeout_seconds: float = TIMEOUT_SECONDS,
        purge_seconds: float = PURGE_SECONDS,
        max_batch: int = MAX_BATCH,
        max_pending: int = MAX_PENDING,
        max_rows: int = MAX_ROWS,
    ) -> None:
        self._throttle = throttle
        self._store = store
        self._clock = clock
        self._flush_seconds = flush_seconds
        self._timeout = timeout_seconds
        self._purge_seconds = purge_seconds
        self._max_batch = max_batch
        self._max_pending = max_pending
        self._max_rows = max_rows
        self._pending: dict[tuple[str, str], _Pending] = {}
        self._familiar_written: dict[tuple[str, str], float] = {}
        self._last_event = 0
        self._events_due = asyncio.Event()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.writes = 0  # transactions written (for the benchmark and the tests)

    async def __aenter__(self) -> SharedThrottle:
        throttle = self._throttle
        try:
            throttle.secret = await self._store.secret()
            self._last_event = await self._store.last_event_id()
            now = self._clock()
            window = throttle.settings.window_seconds
            for stored in await self._store.active(now, window):
                self._merge(stored)
        except Exception as error:  # the database is away: count on our own until it is back
            throttle.observer.store_error()
            log.warning("login throttle: shared state not loaded, counting locally: %s", error)
        throttle.on_change = self._changed
        self._task = asyncio.create_task(self._run(), name="throttle-sharing")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._throttle.on_change = None
        await stop_task(self._task)
        with contextlib.suppress(Exception):
            await self.flush()

    def store_changed(self) -> None:
        """The store reports a change (on this node or another): read the new events."""
        self._events_due.set()
        self._wake.set()

    def _changed(self, username: str, address: str, change: PairChange) -> None:
        key = (username, address)
        pending = self._pending.get(key)
        if pending is None:
            if change.succeeded and not change.reset:
                written = self._familiar_written.get(key, 0.0)
                if self._clock() - written < FAMILIAR_REFRESH_SECONDS:
                    return  # warm: nothing to write
            if len(self._pending) >= self._max_pending:
                # The store is far behind: this change stays local (still enforced here).
                return
            pending = self._pending[key] = _Pending()
        if change.succeeded:
            pending.counted, pending.locked, pending.demoted = 0, False, False
            pending.succeeded = True
        else:
            pending.succeeded = False
            pending.counted += change.counted
            pending.locked |= change.locked
            pending.demoted |= change.demoted

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_purge = loop.time() + self._purge_seconds
        while True:
            await asyncio.sleep(self._flush_seconds)
            await self.flush()
            if self._events_due.is_set():
                self._events_due.clear()
                await self.read_events()
            if loop.time() >= next_purge:
                next_purge = loop.time() + self._purge_seconds
                await self.purge()

    async def flush(self) -> None:
        """Write the queued changes now (one transaction) and merge what comes back."""
        if not self._pending:
            return
        throttle = self._throttle
        now = self._clock()
        keys = list(self._pending)[: self._max_batch]
        batch = {key: self._pending.pop(key) for key in keys}
        updates = []
        for (username, address), pending in batch.items():
            state = throttle.pair_state(username, address)
            familiar_at = throttle.familiar_at(username, address)
            if pending.demoted:
                familiar_at = -1.0
            if pending.succeeded or state is None:
                state = PairState()
            updates.append(
                ThrottleUpdate(
                    pair=ThrottlePair(
                        username=username,
                        address=address,
                        failures=pending.counted,
                        last_failure_at=state.last_failure_at,
                        locked_until=state.locked_until,
                        lockouts=state.lockouts,
                        day_failures=pending.counted,
                        day_started_at=state.day_started_at or now,
                        recent=tuple(state.recent),
                        familiar_at=familiar_at,
                    ),
                    locked=pending.locked,
                    succeeded=pending.succeeded,
                )
            )
        # Not cancelled when slow: cancelling a driver call midway (aiosqlite) leaves a
        # connection to be torn down in the background. The login path never waits for
        # this; while it takes long the process counts on its own, and a write slower than
        # timeout_seconds is counted as a store error.
        started = time.monotonic()
        try:
            stored = await self._store.record(updates, now, throttle.settings.window_seconds)
            if time.monotonic() - started > self._timeout:
                throttle.observer.store_error()
        except Exception as error:
            self._requeue(batch)
            throttle.observer.store_error()
            if not self._failing:
                log.warning("login throttle: store unavailable, counting locally: %s", error)
            self._failing = True
            return
        if self._failing:
            log.info("login throttle: store available again")
        self._failing = False
        self.writes += 1
        for update in updates:
            if update.succeeded or update.pair.familiar_at > 0:
                key = (update.pair.username, update.pair.address)
                self._familiar_written[key] = now
        if len(self._familiar_written) > self._max_rows:
            self._familiar_written.clear()
        for pair in stored:
            self._merge(pair)

    def _requeue(self, batch: dict[tuple[str, str], _Pending]) -> None:
        for key, old in batch.items():
            new = self._pending.get(key)
            if new is None:
                if len(self._pending) < self._max_pending:
                    self._pending[key] = old
                continue
            if not new.succeeded and not old.succeeded:
                new.counted += old.counted
                new.locked |= old.locked
                new.demoted |= old.demoted

    def _merge(self, stored: ThrottlePair) -> None:
        key = (stored.username, stored.address)
        pending = self._pending.get(key)
        if pending is not None and pending.succeeded:
            return  # a success here since: it wins
        state = PairState(
            failures=stored.failures,
            last_failure_at=stored.last_failure_at,
            locked_until=stored.locked_until,
            lockouts=stored.lockouts,
            day_failures=stored.day_failures,
            day_started_at=stored.day_started_at,
        )
        state.recent.extend(stored.recent)
        self._throttle.merge(
            state,
            stored.username,
            stored.address,
            stored.familiar_at,
            pending.counted if pending is not None else 0,
        )

    async def read_events(self) -> None:
        """Apply the lockouts and clears logged since the last look."""
        try:
            events = await self._store.events_after(self._last_event)
            locked = {
                (event.username, event.network)
                for event in events
                if event.kind == "lock" and event.username and event.network
            }
            for event in events:
                self._last_event = max(self._last_event, event.id)
                if event.kind == "clear":
                    self._apply_clear(event.username, event.network)
            pairs = await self._store.pairs(
                {(name, address) for name, address in locked if name and address}
            )
        except Exception as error:
            self._throttle.observer.store_error()
            self._events_due.set()  # try again next round
            log.debug("login throttle: could not read events: %s", error)
            return
        for pair in pairs:
            self._merge(pair)

    def _apply_clear(self, username: str | None, network: str | None) -> None:
        parsed = None
        if network is not None:
            try:
                parsed = ipaddress.ip_network(network, strict=False)
            except ValueError:
                return
        cleared = self._throttle.clear(username, parsed)
        for key in list(self._pending):
            if username is not None and key[0] != username:
                continue
            if parsed is not None and not key_in_network(key[1], parsed):
                continue
            del self._pending[key]
        if cleared:
            log.info(
                "login throttle cleared for %s from %s: %d pair(s)",
                "any user" if username is None else repr(username),
                network or "any address",
                cleared,
            )

    async def purge(self) -> None:
        settings = self._throttle.settings
        try:
            await self._store.purge(
                self._clock(),
                settings.window_seconds,
                settings.familiar_days * DAY_SECONDS,
                self._max_rows,
            )
        except Exception as error:
            self._throttle.observer.store_error()
            log.debug("login throttle: purge failed: %s", error)
