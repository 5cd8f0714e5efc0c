"""AuditObserver: turns each client's ConnectionRecord into audit entries for the AuditLog.

Which connections are audited: every one that reached the request stage (a row from the
moment its tunnel, association or binding opens, completed when it ends; refused requests as
one finished row), and every handshake rejected after the greeting (wrong password, unknown
or disabled user, no acceptable method, protocol error) as one finished row with ``command``
NULL. Connections that say nothing, or leave before authenticating, are not audited: that is
what load-balancer health checks and port scanners do, and they would drown the table.
"""

from __future__ import annotations

from socksauth.audit import AuditLog, new_entry_id
from socksauth.server.client import ConnectionRecord, Outcome
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


class AuditObserver:
    """A ConnectionObserver that records into an AuditLog; never blocks, never raises."""

    __slots__ = ("_log", "_node")

    def __init__(self, audit_log: AuditLog, node: str) -> None:
        self._log = audit_log
        self._node = node

    def opened(self, record: ConnectionRecord) -> None:
        """The tunnel, association or binding is up: its row exists from now on."""
        if record.audit_id is None:
            record.audit_id = new_entry_id()
        self._log.record(self._entry(record, finished=False))

    def finished(self, record: ConnectionRecord) -> None:
        """The client is gone: complete its row, or write the one row of a short story."""
        if record.audit_id is None:
            if not _audited(record):
                return
            record.audit_id = new_entry_id()
        self._log.record(self._entry(record, finished=True))

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
