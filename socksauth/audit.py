"""AuditLog: takes audit entries without ever blocking, writes them in batches, loses none.

Entries wait in memory keyed by id, so a connection that opens and closes within one batch
window becomes a single finished row. A background task writes a batch every
``flush_interval_seconds`` or as soon as ``batch_size`` entries wait. While the database is
unreachable entries stay in memory up to ``memory_limit``; past it they are appended to a
local spill file (JSON lines) and replayed once the database is back. Every write is an
idempotent upsert (AuditSink), so the order of replays and retries does not matter.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from uuid import UUID

from socksauth.errors import DatabaseError
from socksauth.health import Health
from socksauth.logs import get_logger
from socksauth.store.interfaces import AuditEntry, AuditSink

log = get_logger("audit")

BATCH_SIZE = 500
FLUSH_INTERVAL_SECONDS = 0.5
# About 500 bytes per entry: a 50 MB ceiling before entries go to the spill file.
MEMORY_LIMIT = 100_000
RETRY_MAX_SECONDS = 30.0
SHUTDOWN_TIMEOUT_SECONDS = 10.0

# Fields of AuditEntry that travel as ISO strings / hex in the spill file.
_DATETIMES = ("started_at", "ended_at", "updated_at")
_REPLAY_ROUNDS = 4


def new_entry_id() -> UUID:
    """A time-ordered random UUID (the UUIDv7 layout of RFC 9562).

    Generated in-process so a row needs no round trip; time-ordered so PostgreSQL's primary
    key index grows at its right edge instead of being written all over.
    """
    milliseconds = time.time_ns() // 1_000_000
    random_bits = int.from_bytes(os.urandom(10))
    value = (
        (milliseconds & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76
        | ((random_bits >> 62) & 0xFFF) << 64
        | 0b10 << 62
        | (random_bits & 0x3FFF_FFFF_FFFF_FFFF)
    )
    return UUID(int=value)


class AuditLog:
    """The proxy's audit trail: ``record()`` is O(1) and never raises; a task owned by this
    object (an async context manager) writes to ``sink``.

    Counters (cumulative unless said otherwise): ``queued`` entries recorded; ``coalesced``
    entries merged into a later one for the same id before being written; ``written`` entries
    written; ``spilled`` entries appended to the spill file; ``replayed`` entries written from
    it; ``write_errors`` failed writes; ``buffered`` (now) entries waiting in memory;
    ``spill_pending`` (now) entries in the spill file.
    """

    def __init__(
        self,
        sink: AuditSink,
        *,
        node: str,
        spill_path: Path,
        batch_size: int = BATCH_SIZE,
        flush_interval_seconds: float = FLUSH_INTERVAL_SECONDS,
        memory_limit: int = MEMORY_LIMIT,
        retry_max_seconds: float = RETRY_MAX_SECONDS,
        shutdown_timeout_seconds: float = SHUTDOWN_TIMEOUT_SECONDS,
    ) -> None:
        if batch_size < 1 or memory_limit < batch_size:
            raise ValueError("need 1 <= batch_size <= memory_limit")
        self.node = node
        self.spill_path = spill_path
        self._sink = sink
        self._batch_size = batch_size
        self._interval = flush_interval_seconds
        self._memory_limit = memory_limit
        self._retry_max = retry_max_seconds
        self._shutdown_timeout = shutdown_timeout_seconds
        self._pending: dict[UUID, AuditEntry] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        # While the database is down: one line when it starts and one when it ends, and
        # writes back off from flush_interval up to retry_max (socksauth/health.py).
        # The first retry after 2-4 flush intervals (it was 2 before jitter), doubling.
        self.health = Health(
            "audit: writing to the database",
            log,
            base_seconds=4 * flush_interval_seconds,
            max_seconds=max(retry_max_seconds, 4 * flush_interval_seconds),
        )
        self._retry_in = flush_interval_seconds
        self._spill_health = Health(f"audit: writing the spill file {spill_path}", log)
        self._spill_retry_at = 0.0
        # Rows a crashed predecessor left open are closed once its spill file is replayed.
        self._interrupted_before: datetime | None = None
        self.queued = 0
        self.coalesced = 0
        self.written = 0
        self.spilled = 0
        self.replayed = 0
        self.write_errors = 0
        self.spill_pending = 0

    @property
    def buffered(self) -> int:
        return len(self._pending)

    @property
    def failing(self) -> bool:
        """Whether the last write failed (entries are being kept, not written)."""
        return self.health.failing

    def record(self, entry: AuditEntry) -> None:
        """Queue ``entry``; a later entry with the same id (interim counts, its completion)
        replaces it, except that nothing open replaces a completion."""
        self.queued += 1
        previous = self._pending.pop(entry.id, None)
        if previous is not None:
            self.coalesced += 1
            if entry.is_open and not previous.is_open:
                entry = previous
        self._pending[entry.id] = entry
        pending = len(self._pending)
        if pending >= self._memory_limit or (
            pending >= self._batch_size and not self.health.failing
        ):
            self._wake.set()

    async def flush(self) -> bool:
        """Write everything waiting in memory and in the spill file now; whether all was."""
        return await self._write_pending()

    async def __aenter__(self) -> AuditLog:
        self._interrupted_before = datetime.now(UTC)
        self.spill_pending = await asyncio.to_thread(_count_lines, self._spill_files())
        # Before serving: replay what a previous run spilled, then close what it left open.
        await self._write_pending()
        self._task = asyncio.create_task(self._run(), name="audit-writer")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        written = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._shutdown_timeout):
                written = await self._write_pending()
        if self._pending:
            # The database did not take them in time: keep them for the next start.
            await self._spill()
        log.info(
            "audit closed: %d written, %d buffered, %d in the spill file%s",
            self.written,
            self.buffered,
            self.spill_pending,
            "" if written else f" ({self.spill_path})",
        )

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            deadline = loop.time() + (self._retry_in if self.health.failing else self._interval)
            while not self._closing:
                if len(self._pending) >= self._memory_limit:
                    await self._spill()
                if not self.health.failing and len(self._pending) >= self._batch_size:
                    break
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wake.clear()
                try:
                    async with asyncio.timeout(remaining):
                        await self._wake.wait()
                except TimeoutError:
                    break
            if self._closing:
                return
            await self._write_pending()

    async def _write_pending(self) -> bool:
        # Bounded: what is pending now, not what keeps arriving while we write.
        rounds = len(self._pending) // self._batch_size + 1
        for _ in range(rounds):
            if not self._pending:
                break
            batch = list(itertools.islice(self._pending.values(), self._batch_size))
            if not await self._write(batch):
                return False
            for entry in batch:
                # Unless a completion replaced it while the batch was in flight.
                if self._pending.get(entry.id) is entry:
                    del self._pending[entry.id]
            self.written += len(batch)
            if len(self._pending) >= self._memory_limit:
                await self._spill()
        if self._pending:
            return True  # more arrived meanwhile: the next round writes them first
        if not await self._replay():
            return False
        return await self._close_interrupted()

    async def _write(self, batch: Sequence[AuditEntry]) -> bool:
        try:
            await self._sink.write_batch(batch)
        except (DatabaseError, OSError) as error:
            self.write_errors += 1
            if not self.health.failing:
                log.warning(
                    "audit: keeping entries in memory, then in %s, until the database is back",
                    self.spill_path,
                )
            self._retry_in = self.health.failed(error)
            return False
        if self.health.failing:
            self.health.succeeded()
            log.warning(
                "audit: %d entries buffered, %d in the spill file, written from now on",
                self.buffered,
                self.spill_pending,
            )
        return True

    async def _spill(self) -> None:
        now = time.monotonic()
        if self._spill_health.failing and now < self._spill_retry_at:
            return  # the spill file failed a moment ago: not at every new entry
        entries = list(self._pending.values())
        self._pending.clear()
        try:
            await asyncio.to_thread(_append, self.spill_path, entries)
        except OSError as error:
            # Nowhere to put them (disk full, no permission): keep them in memory rather than
            # lose them; logged once until a spill works again.
            for entry in entries:
                self._pending.setdefault(entry.id, entry)
            self._spill_retry_at = now + self._spill_health.failed(error)
            return
        self._spill_health.succeeded()
        self.spilled += len(entries)
        self.spill_pending += len(entries)
        log.warning("audit: %d entries spilled to %s", len(entries), self.spill_path)

    def _spill_files(self) -> list[Path]:
        replaying = _replaying_path(self.spill_path)
        return [path for path in (replaying, self.spill_path) if path.exists()]

    async def _replay(self) -> bool:
        # Spills that happen while a file is replayed go to a fresh file: a few rounds at most.
        for _ in range(_REPLAY_ROUNDS):
            files = self._spill_files()
            if not files:
                self.spill_pending = 0
                return True
            replaying = _replaying_path(self.spill_path)
            if not replaying.exists():
                self.spill_path.replace(replaying)
            lines = await asyncio.to_thread(replaying.open, "r", encoding="utf-8")
            try:
                while True:
                    batch, ended = await asyncio.to_thread(_read_entries, lines, self._batch_size)
                    entries = _merged(batch)
                    if entries and not await self._write(entries):
                        return False
                    self.replayed += len(batch)
                    self.spill_pending = max(0, self.spill_pending - len(batch))
                    if ended:
                        break
            finally:
                lines.close()
            replaying.unlink()
            log.warning("audit: spill file replayed (%d entries in all)", self.replayed)
        return True

    async def _close_interrupted(self) -> bool:
        if self._interrupted_before is None:
            return True
        try:
            closed = await self._sink.close_interrupted(self.node, self._interrupted_before)
        except (DatabaseError, OSError) as error:
            self.write_errors += 1
            log.warning("audit: cannot close rows left open by a previous run: %s", error)
            return False
        self._interrupted_before = None
        if closed:
            log.warning("audit: %d connection(s) left open by a previous run: interrupted", closed)
        return True


def _replaying_path(spill_path: Path) -> Path:
    return spill_path.with_name(spill_path.name + ".replaying")


def _append(path: Path, entries: Sequence[AuditEntry]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = "".join(json.dumps(_to_json(entry), separators=(",", ":")) + "\n" for entry in entries)
    # Owner-only and appended to: the file holds who connected where.
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "a", encoding="utf-8") as file:
        file.write(lines)
        file.flush()
        os.fsync(file.fileno())


def _count_lines(paths: Sequence[Path]) -> int:
    total = 0
    for path in paths:
        with path.open("rb") as file:
            total += sum(1 for _ in file)
    return total


def _read_entries(lines: IO[str], limit: int) -> tuple[list[AuditEntry], bool]:
    """Up to ``limit`` entries, and whether the file ended. A torn line (the process died
    while appending it) is skipped and logged: the rest of the file is still good.
    """
    entries: list[AuditEntry] = []
    for _ in range(limit):
        line = lines.readline()
        if not line:
            return entries, True
        try:
            entries.append(_from_json(json.loads(line)))
        except (ValueError, TypeError, KeyError):
            log.warning("audit: skipped an unreadable line of the spill file")
    return entries, False


def _merged(entries: Sequence[AuditEntry]) -> list[AuditEntry]:
    # One statement may not touch a row twice: keep the last state of each id.
    by_id: dict[UUID, AuditEntry] = {}
    for entry in entries:
        previous = by_id.get(entry.id)
        if previous is not None and entry.is_open and not previous.is_open:
            continue
        by_id[entry.id] = entry
    return list(by_id.values())


def _to_json(entry: AuditEntry) -> dict[str, Any]:
    values = {field.name: getattr(entry, field.name) for field in dataclasses.fields(entry)}
    values["id"] = entry.id.hex
    for name in _DATETIMES:
        if values[name] is not None:
            values[name] = values[name].isoformat()
    return values


def _from_json(values: dict[str, Any]) -> AuditEntry:
    values["id"] = UUID(hex=values["id"])
    for name in _DATETIMES:
        # .get: a spill file written before a field existed lacks it.
        if values.get(name) is not None:
            values[name] = datetime.fromisoformat(values[name])
    return AuditEntry(**values)
