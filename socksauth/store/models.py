"""The SQL schema as SQLAlchemy declarative classes; migrations/ is the source of truth."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Uuid,
    false,
    text,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints let alembic drop and alter them by name on every backend (SQLite batch
# mode rebuilds tables and needs the names); the names below are alembic's documented set.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base whose metadata names every constraint."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UserRow(Base):
    """One account. Datetimes are UTC; ``password_hash`` is a passlib hash string."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # 255 bytes is the RFC 1929 limit for both the username and the password on the wire.
    username: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    enabled: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=True, server_default=true()
    )
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # NULL: no limit, never expires (migration 0003).
    max_connections: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_bandwidth_bytes_per_second: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Migration 0008. Quota: bytes both ways per period ("day", "week", "month", "Nd");
    # client_networks and egress: space-separated lists; NULL: none.
    quota_bytes: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    quota_period: Mapped[str | None] = mapped_column(String(16), nullable=True)
    client_networks: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    egress: Mapped[str | None] = mapped_column(String(2000), nullable=True)
    # May open the dashboard with HTTP Basic (migration 0007).
    is_admin: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False, server_default=false()
    )


class RuleRow(Base):
    """One destination rule; evaluated by ``position`` then ``id``, first match decides.

    NULL criteria match anything; a NULL ``username`` makes the rule apply to every user.
    """

    __tablename__ = "rules"
    __table_args__ = (
        CheckConstraint("action IN ('allow', 'deny')", name="action"),
        CheckConstraint(
            "(port_min IS NULL AND port_max IS NULL) OR "
            "(port_min >= 0 AND port_min <= port_max AND port_max <= 65535)",
            name="ports",
        ),
        Index("ix_rules_position", "position", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, nullable=False)
    action: Mapped[str] = mapped_column(String(8), nullable=False)
    username: Mapped[str | None] = mapped_column(String(255), nullable=True)
    cidr: Mapped[str | None] = mapped_column(String(64), nullable=True)
    domain: Mapped[str | None] = mapped_column(String(255), nullable=True)
    port_min: Mapped[int | None] = mapped_column(Integer, nullable=True)
    port_max: Mapped[int | None] = mapped_column(Integer, nullable=True)
    command: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


_OPEN = text("ended_at IS NULL")


class AuditRow(Base):
    """One client connection that reached the request stage, or one failed login / rejected
    handshake (``command`` is NULL). Open while ``ended_at`` (and ``outcome``) are NULL.
    """

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_username_started_at", "username", "started_at"),
        Index("ix_audit_events_started_at", "started_at"),
        Index("ix_audit_events_outcome_started_at", "outcome", "started_at"),
        Index("ix_audit_events_node_open", "node", postgresql_where=_OPEN, sqlite_where=_OPEN),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    node: Mapped[str] = mapped_column(String(255), nullable=False)
    username: Mapped[str | None] = mapped_column(String(255), nullable=True)
    client_host: Mapped[str] = mapped_column(String(64), nullable=False)
    client_port: Mapped[int] = mapped_column(Integer, nullable=False)
    command: Mapped[str | None] = mapped_column(String(16), nullable=True)
    target_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    target_port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    dialed: Mapped[str | None] = mapped_column(String(300), nullable=True)
    reply: Mapped[int | None] = mapped_column(SmallInteger, nullable=True)
    outcome: Mapped[str | None] = mapped_column(String(32), nullable=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    duration_seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    bytes_from_client: Mapped[int] = mapped_column(
        BigInteger, nullable=False, default=0, server_default="0"
    )
    bytes_to_client: Mapped[int] = mapped_column(
        BigInteger, nullable=False, default=0, server_default="0"
    )
    datagrams_from_client: Mapped[int] = mapped_column(
        BigInteger, nullable=False, default=0, server_default="0"
    )
    datagrams_to_client: Mapped[int] = mapped_column(
        BigInteger, nullable=False, default=0, server_default="0"
    )
    # What the client spoke: socks5 or http (migration 0006).
    protocol: Mapped[str] = mapped_column(
        String(16), nullable=False, default="socks5", server_default="socks5"
    )
    # HTTP: absolute-form requests forwarded on this connection.
    requests: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    # Interim counts of an open tunnel (migration 0007): when the byte columns were last
    # updated, and the bytes per second each way over the interval before.
    updated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    rate_from_client: Mapped[float | None] = mapped_column(Float, nullable=True)
    rate_to_client: Mapped[float | None] = mapped_column(Float, nullable=True)
    # A kick asked for (`socksauth sessions kill`), and by whom; never written by the audit.
    kill_requested_at: Mapped[datetime | None] = mapped_column(
        DateTime(timezone=True), nullable=True
    )
    killed_by: Mapped[str | None] = mapped_column(String(255), nullable=True)


class StoreRevisionRow(Base):
    """One row: a counter that triggers bump on every change of an account or a rule
    (migration 0004), so each node knows when its caches are stale."""

    __tablename__ = "store_revision"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False)


class ConnectionLeaseRow(Base):
    """How many connections ``node`` has open for ``username``: a per-user limit counts the
    leases of every node renewed recently enough (store/leases.py)."""

    __tablename__ = "connection_leases"
    __table_args__ = (Index("ix_connection_leases_username", "username"),)

    node: Mapped[str] = mapped_column(String(255), primary_key=True)
    username: Mapped[str] = mapped_column(String(255), primary_key=True)
    connections: Mapped[int] = mapped_column(Integer, nullable=False)
    renewed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)


class LoginThrottleRow(Base):
    """One (username, address) pair's failures and lockout, shared by every node
    (store/throttle.py); ``recent`` holds keyed HMACs (hex, comma-separated), no password."""

    __tablename__ = "login_throttle"
    __table_args__ = (Index("ix_login_throttle_last_failure_at", "last_failure_at"),)

    username: Mapped[str] = mapped_column(String(255), primary_key=True)
    address: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, nullable=False)
    last_failure_at: Mapped[float] = mapped_column(Float, nullable=False)
    locked_until: Mapped[float] = mapped_column(Float, nullable=False)
    lockouts: Mapped[int] = mapped_column(Integer, nullable=False)
    day_failures: Mapped[int] = mapped_column(Integer, nullable=False)
    day_started_at: Mapped[float] = mapped_column(Float, nullable=False)
    recent: Mapped[str] = mapped_column(String(400), nullable=False)
    familiar_at: Mapped[float] = mapped_column(Float, nullable=False, server_default="0")


class LoginThrottleEventRow(Base):
    """A lockout (``kind`` "lock") or a clear ("clear", by username and/or network) that
    every node applies; inserting one bumps the store revision (migration 0005)."""

    __tablename__ = "login_throttle_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    username: Mapped[str | None] = mapped_column(String(255), nullable=True)
    network: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[float] = mapped_column(Float, nullable=False)


class LoginThrottleKeyRow(Base):
    """One row: the secret keying the throttle's HMACs, the same for every node."""

    __tablename__ = "login_throttle_key"
    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    secret: Mapped[str] = mapped_column(String(64), nullable=False)


class TrafficUsageRow(Base):
    """Bytes (both ways) ``node`` relayed for ``username`` in the hour from ``bucket_start``:
    a quota sums every node's hours of its period (store/usage.py, migration 0008)."""

    __tablename__ = "traffic_usage"
    __table_args__ = (Index("ix_traffic_usage_bucket_start", "bucket_start"),)

    username: Mapped[str] = mapped_column(String(255), primary_key=True)
    bucket_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    node: Mapped[str] = mapped_column(String(255), primary_key=True)
    bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)


class NodeRow(Base):
    """One running node (process): renewed every few seconds while it runs, deleted at a
    clean stop; a row not renewed for a while is a node that died (store/nodes.py)."""

    __tablename__ = "nodes"

    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    heartbeat_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
    connections: Mapped[int] = mapped_column(Integer, nullable=False, default=0, server_default="0")
    version: Mapped[str | None] = mapped_column(String(32), nullable=True)


class AdminTokenRow(Base):
    """A dashboard credential: the SHA-256 (hex) of a random token, never the token."""

    __tablename__ = "admin_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), nullable=False)
