"""AuditObserver: turns each client's ConnectionRecord into audit entries for the AuditLog.

Which connections are audited: every one that reached the request stage (a row from the
moment its tunnel, association or binding opens, completed when it ends; refused requests as
one finished row), and every handshake rejected after the greeting (wrong password, unknown
or disabled user, no acceptable method, protocol error) as one finished row with ``command``
NULL. Connections that say nothing, or leave before authenticating, are not audited: that is
what load-balancer health checks and port scanners do, and they would drown the table.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from uuid import UUID

from socksauth.audit import AuditLog, new_entry_id
from socksauth.connection_record import ConnectionRecord, Outcome
from socksauth.store.interfaces import AuditEntry

# Handshakes that ended before a request but are worth a row: someone tried and was refused.
_REJECTED = frozenset(
    {
        Outcome.AUTH_FAILED,
        Outcome.THROTTLED,
        Outcome.LOCKED_OUT,
        Outcome.NO_ACCEPTABLE_METHOD,
        Outcome.PROTOCOL_ERROR,
        Outcome.STORE_UNAVAILABLE,
    }
)

# Column widths of audit_events: longer values (a hostile client's) are cut, not refused,
# because one row the database refuses would hold up the whole batch.
_HOST_CHARS = 64
_NAME_CHARS = 255
_DIALED_CHARS = 300


# How often the byte counts of open tunnels are written to their rows (interim updates).
INTERIM_SECONDS = 5.0
# Tunnels handled between two yields to the loop: a tick over 10,000 tunnels never holds the
# loop for more than one chunk (about 2 ms; bench/bench_interim.py).
INTERIM_CHUNK = 250


@dataclasses.dataclass(slots=True)
class _Progress:
    """What the last interim update of one open record said."""

    record: ConnectionRecord
    opened: AuditEntry  # the row as opened: what an interim entry repeats
    counts: tuple[int, int] = (0, 0)
    at: float = 0.0  # monotonic
    moving: bool = False  # its last rates were not zero


class AuditObserver:
    """A ConnectionObserver that records into an AuditLog; never blocks, never raises.

    With ``run_interim`` running, every open tunnel's row also gets its byte counts so far
    and its rates every few seconds: one entry per tunnel that moved (and one more when it
    stops), queued like any other, so the relay does nothing more per byte.
    """

    __slots__ = ("_log", "_node", "_open")

    def __init__(self, audit_log: AuditLog, node: str) -> None:
        self._log = audit_log
        self._node = node
        self._open: dict[UUID, _Progress] = {}

    def opened(self, record: ConnectionRecord) -> None:
        """The tunnel, association or binding is up: its row exists from now on."""
        if record.audit_id is None:
            record.audit_id = new_entry_id()
        entry = self._entry(record, finished=False)
        progress = self._open.get(record.audit_id)
        if progress is None:
            self._open[record.audit_id] = _Progress(record, entry, at=time.monotonic())
        else:
            progress.opened = entry  # BIND's second reply: now with the peer dialled
        self._log.record(entry)

    def finished(self, record: ConnectionRecord) -> None:
        """The client is gone: complete its row, or write the one row of a short story."""
        if record.audit_id is None:
            if not _audited(record):
                return
            record.audit_id = new_entry_id()
        self._open.pop(record.audit_id, None)
        self._log.record(self._entry(record, finished=True))

    def record_interim(self, progresses: Iterable[_Progress] | None = None) -> int:
        """Queue the counts of each open tunnel (of ``progresses``, else all) that moved
        since the last call, or that stopped moving (its rates become 0); how many."""
        now = time.monotonic()
        wall = datetime.now(UTC)
        queued = 0
        open_now = self._open
        for progress in open_now.values() if progresses is None else progresses:
            counts_of = progress.record.live_counts
            if counts_of is None or open_now.get(progress.opened.id) is not progress:
                continue  # not relaying (yet), or finished since the chunk was taken
            counts = counts_of()
            if counts == progress.counts and not progress.moving:
                continue
            seconds = max(now - progress.at, 1e-3)
            up = (counts[0] - progress.counts[0]) / seconds
            down = (counts[1] - progress.counts[1]) / seconds
            progress.counts, progress.at, progress.moving = counts, now, bool(up or down)
            self._log.record(_interim(progress.opened, counts, wall, up, down))
            queued += 1
        return queued

    async def run_interim(self, interval_seconds: float = INTERIM_SECONDS) -> None:
        """``record_interim`` every ``interval_seconds``, in chunks, until cancelled."""
        while True:
            await asyncio.sleep(interval_seconds)
            progresses = list(self._open.values())
            for start in range(0, len(progresses), INTERIM_CHUNK):
                if start:
                    await asyncio.sleep(0)
                self.record_interim(progresses[start : start + INTERIM_CHUNK])

    def _entry(self, record: ConnectionRecord, *, finished: bool) -> AuditEntry:
        assert record.audit_id is not None
        target = record.target
        return AuditEntry(
            id=record.audit_id,
            node=self._node,
            client_host=_text(record.client_host, _HOST_CHARS),
            client_port=record.client_port,
            started_at=record.started_at,
            username=None if record.username is None else _text(record.username, _NAME_CHARS),
            command=None if record.command is None else record.command.name.lower(),
            target_host=None if target is None else _text(target.host, _NAME_CHARS),
            target_port=None if target is None else target.port,
            dialed=None if record.dialed is None else _text(record.dialed, _DIALED_CHARS),
            reply=None if record.reply is None else int(record.reply),
            outcome=record.outcome.value if finished else None,
            ended_at=record.ended_at if finished else None,
            duration_seconds=record.duration_seconds if finished else None,
            bytes_from_client=record.bytes_from_client,
            bytes_to_client=record.bytes_to_client,
            datagrams_from_client=record.datagrams_from_client,
            datagrams_to_client=record.datagrams_to_client,
            protocol=record.protocol.value,
            requests=record.requests,
        )


def _interim(
    opened: AuditEntry, counts: tuple[int, int], at: datetime, up: float, down: float
) -> AuditEntry:
    """``opened`` with the counts so far: built field by field (dataclasses.replace costs
    several times more, and this runs for every moving tunnel at every tick)."""
    return AuditEntry(
        id=opened.id,
        node=opened.node,
        client_host=opened.client_host,
        client_port=opened.client_port,
        started_at=opened.started_at,
        username=opened.username,
        command=opened.command,
        target_host=opened.target_host,
        target_port=opened.target_port,
        dialed=opened.dialed,
        reply=opened.reply,
        bytes_from_client=counts[0],
        bytes_to_client=counts[1],
        updated_at=at,
        rate_from_client=up,
        rate_to_client=down,
    )


def _audited(record: ConnectionRecord) -> bool:
    return (
        record.command is not None
        or record.reply is not None
        or record.username is not None
        or record.outcome in _REJECTED
    )


def _text(value: str, limit: int) -> str:
    """``value`` as text every database stores: names arrive as bytes decoded with
    surrogateescape (not UTF-8 → lone surrogates) and may hold NUL, which PostgreSQL refuses.
    """
    if value.isascii() and "\x00" not in value:
        return value[:limit]  # nearly every value, with no encoding round trip per field
    text = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return text.replace("\x00", "\ufffd")[:limit]
