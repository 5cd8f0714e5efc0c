"""SqlAuditStore: the audit_events table behind AuditSink (batched upserts) and AuditReader."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Table, case, delete, func, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from socksauth.connection_record import Outcome
from socksauth.store.database import database_errors
from socksauth.store.interfaces import (
    FAILED_LOGIN_OUTCOMES,
    OPEN,
    AuditEntry,
    AuditQuery,
    SortOrder,
    UserStats,
)
from socksauth.store.models import AuditRow
from socksauth.store.times import from_db, to_utc

_AUDIT: Table = AuditRow.__table__  # type: ignore[assignment]
# Set by `socksauth sessions kill`, never by the audit: no write touches them.
_KICK = ("kill_requested_at", "killed_by")
_COLUMNS = tuple(column.name for column in _AUDIT.columns if column.name not in _KICK)
# A finished entry completes an open row: everything but who and when it started may change.
_COMPLETED = tuple(name for name in _COLUMNS if name not in ("id", "node", "started_at"))
# An interim entry updates the counts of a row that is still open, and nothing else.
_INTERIM = (
    "bytes_from_client",
    "bytes_to_client",
    "datagrams_from_client",
    "datagrams_to_client",
    "updated_at",
    "rate_from_client",
    "rate_to_client",
)


@dataclass(frozen=True, slots=True)
class _DriverStatement:
    """An upsert compiled once to the driver's SQL, and how to turn an entry into its row."""

    sql: str
    names: tuple[str, ...]  # the entry's attribute for each parameter, in placeholder order
    # (index, conversion) of the parameters whose value the driver cannot take as it is.
    conversions: tuple[tuple[int, Callable[[Any], Any]], ...]

    def row(self, entry: AuditEntry) -> tuple[Any, ...]:
        values = [getattr(entry, name) for name in self.names]
        for index, convert in self.conversions:
            if values[index] is not None:
                values[index] = convert(values[index])
        return tuple(values)


class SqlAuditStore:
    """The audit in SQL. Writes are multi-row INSERT … ON CONFLICT upserts keyed by the
    proxy-generated id, so retrying or replaying a batch is harmless.

    Batches go to the driver's own executemany (``exec_driver_sql``) as rows of plain values:
    the statements are compiled by SQLAlchemy once, here, and each value converted by the
    dialect's own bind conversion (so the stored text of a UUID or a SQLite datetime is
    SQLAlchemy's), but the per-row work of SQLAlchemy's executemany of a statement object
    (about 10 µs of the event loop's thread per connection audited) is not paid. SQLite runs
    the executemany in aiosqlite's thread; asyncpg pipelines it.
    """

    __slots__ = ("_engine", "_statements")

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        dialect = engine.dialect
        self._statements = tuple(
            _compiled(statement, dialect) for statement in _upserts(dialect.name)
        )

    async def write_batch(self, entries: Sequence[AuditEntry]) -> None:
        """Upsert ``entries`` in one transaction (see AuditSink.write_batch).

        Raises:
            DatabaseError: the database is unreachable or refused the batch.
        """
        opened, finished, interim = self._statements
        batches = (
            (opened, [e for e in entries if e.is_open and not e.is_interim]),
            (interim, [e for e in entries if e.is_interim]),
            (finished, [e for e in entries if not e.is_open]),
        )
        with database_errors():
            async with self._engine.begin() as conn:
                for statement, batch in batches:
                    if batch:
                        # The driver's SQL and plain rows: executemany without SQLAlchemy's
                        # per-row parameter processing, still with its errors, transaction
                        # and handling of broken connections.
                        rows = [statement.row(entry) for entry in batch]
                        await conn.exec_driver_sql(statement.sql, rows)

    async def close_interrupted(self, node: str, at: datetime) -> int:
        """Close ``node``'s rows still open that started before ``at`` (the previous process's:
        this one's started later) as ``Outcome.INTERRUPTED`` at ``at``; how many there were.
        """
        at = to_utc(at)
        with database_errors():
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    update(AuditRow)
                    .where(
                        AuditRow.node == node,
                        AuditRow.ended_at.is_(None),
                        AuditRow.started_at < at,
                    )
                    .values(ended_at=at, outcome=Outcome.INTERRUPTED.value)
                )
        return int(result.rowcount)

    async def find_entries(self, query: AuditQuery) -> Sequence[AuditEntry]:
        """Entries matching ``query``, ordered by start time (then id, for a stable order)."""
        conditions = _period(query.since, query.until)
        if query.username is not None:
            conditions.append(AuditRow.username == query.username)
        if query.target is not None:
            conditions.append(
                or_(
                    AuditRow.target_host.contains(query.target, autoescape=True),
                    AuditRow.dialed.contains(query.target, autoescape=True),
                )
            )
        if query.outcome == OPEN:
            conditions.append(AuditRow.ended_at.is_(None))
        elif query.outcome is not None:
            conditions.append(AuditRow.outcome == query.outcome)
        if query.protocol is not None:
            conditions.append(AuditRow.protocol == query.protocol)
        if query.order is SortOrder.NEWEST_FIRST:
            order = (AuditRow.started_at.desc(), AuditRow.id.desc())
        else:
            order = (AuditRow.started_at.asc(), AuditRow.id.asc())
        statement = select(_AUDIT).where(*conditions).order_by(*order).limit(query.limit)
        with database_errors():
            async with self._engine.connect() as conn:
                rows = (await conn.execute(statement)).all()
        return [_entry(row) for row in rows]

    async def user_stats(
        self,
        since: datetime | None = None,
        until: datetime | None = None,
        protocol: str | None = None,
    ) -> Sequence[UserStats]:
        """Per-user totals of entries started in [since, until) (of one protocol, if given),
        ordered by username."""
        conditions = _period(since, until)
        if protocol is not None:
            conditions.append(AuditRow.protocol == protocol)
        statement = (
            select(
                AuditRow.username,
                func.sum(case((AuditRow.command.is_not(None), 1), else_=0)).label("connections"),
                func.sum(case((AuditRow.outcome.in_(FAILED_LOGIN_OUTCOMES), 1), else_=0)).label(
                    "failed"
                ),
                func.coalesce(func.sum(AuditRow.bytes_from_client), 0).label("from_client"),
                func.coalesce(func.sum(AuditRow.bytes_to_client), 0).label("to_client"),
                # Tunnel time: a refused handshake's duration is not time spent tunnelling.
                func.coalesce(
                    func.sum(case((AuditRow.command.is_not(None), AuditRow.duration_seconds))),
                    0.0,
                ).label("seconds"),
                func.max(func.coalesce(AuditRow.ended_at, AuditRow.started_at)).label("last"),
            )
            .where(*conditions)
            .group_by(AuditRow.username)
        )
        with database_errors():
            async with self._engine.connect() as conn:
                rows = (await conn.execute(statement)).all()
        stats = [
            UserStats(
                username=row.username,
                connections=int(row.connections),
                failed_logins=int(row.failed),
                bytes_from_client=int(row.from_client),
                bytes_to_client=int(row.to_client),
                tunnel_seconds=float(row.seconds),
                last_seen=from_db(row.last),
            )
            for row in rows
        ]
        # Sorted here: PostgreSQL's ORDER BY follows the server's collation, SQLite's is binary.
        return sorted(stats, key=lambda item: (item.username is not None, item.username or ""))

    async def prune(self, before: datetime) -> int:
        """Delete finished entries that started before ``before``; how many were deleted."""
        with database_errors():
            async with self._engine.begin() as conn:
                result = await conn.execute(
                    delete(AuditRow).where(
                        AuditRow.started_at < to_utc(before), AuditRow.ended_at.is_not(None)
                    )
                )
        return int(result.rowcount)


def _compiled(statement: Any, dialect: Dialect) -> _DriverStatement:
    compiled = statement.compile(dialect=dialect, column_keys=list(_COLUMNS))
    names = tuple(compiled.positiontup or ())
    conversions = []
    for index, name in enumerate(names):
        column_type = _AUDIT.columns[name].type
        convert = column_type.dialect_impl(dialect).bind_processor(dialect)
        if column_type.python_type is datetime:
            # Every instant goes in as UTC (store/times.py), then as the dialect stores it.
            convert = to_utc if convert is None else _then(to_utc, convert)
        if convert is not None:
            conversions.append((index, convert))
    return _DriverStatement(str(compiled), names, tuple(conversions))


def _then(first: Callable[[Any], Any], second: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: second(first(value))


def _upserts(dialect: str) -> tuple[Any, Any, Any]:
    """(insert an open row unless it exists, insert or complete a finished row, insert an
    open row or update its counts unless it has been completed meanwhile)."""
    # ON CONFLICT is spelled the same on both, but each dialect has its own insert().
    insert = postgresql.insert(_AUDIT) if dialect == "postgresql" else sqlite.insert(_AUDIT)
    open_statement = insert.on_conflict_do_nothing(index_elements=["id"])
    finish_statement = insert.on_conflict_do_update(
        index_elements=["id"], set_={name: insert.excluded[name] for name in _COMPLETED}
    )
    interim_statement = insert.on_conflict_do_update(
        index_elements=["id"],
        set_={name: insert.excluded[name] for name in _INTERIM},
        where=_AUDIT.c.ended_at.is_(None),
    )
    return open_statement, finish_statement, interim_statement


def _period(since: datetime | None, until: datetime | None) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = []
    if since is not None:
        conditions.append(AuditRow.started_at >= to_utc(since))
    if until is not None:
        conditions.append(AuditRow.started_at < to_utc(until))
    return conditions


def _entry(row: Any) -> AuditEntry:
    """An AuditEntry from a row of ``select(_AUDIT)`` (all columns)."""
    values = {name: getattr(row, name) for name in _COLUMNS}
    values["started_at"] = from_db(row.started_at)
    if row.ended_at is not None:
        values["ended_at"] = from_db(row.ended_at)
    if row.updated_at is not None:
        values["updated_at"] = from_db(row.updated_at)
    values["killed_by"] = row.killed_by
    return AuditEntry(**values)
