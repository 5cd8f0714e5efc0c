"""Instants in and out of the database: always timezone-aware UTC in Python."""

from __future__ import annotations

from datetime import UTC, datetime


def to_utc(moment: datetime) -> datetime:
    """``moment`` as UTC, for a column; a naive datetime is refused, its zone unknowable.

    SQLite stores the wall-clock digits without a zone, so every instant must go in as UTC.
    """
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError("times stored in the database must be timezone-aware datetimes")
    return moment.astimezone(UTC)


def from_db(moment: datetime) -> datetime:
    """A column's instant as aware UTC: SQLite hands back the naive UTC value we stored,
    PostgreSQL an aware one."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)
