"""Destination rules, and per-user limits: concurrent connections, bandwidth, expiry.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rules",
        sa.Column("id", sa.Integer(), nullable=False),
        # Evaluation order, lowest first; ties by id (the order they were added).
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=8), nullable=False),
        # NULL: the rule is for every user (and for clients that skipped authentication).
        # No foreign key: a rule may be written before its user, and outlives a deletion.
        sa.Column("username", sa.String(length=255), nullable=True),
        sa.Column("cidr", sa.String(length=64), nullable=True),
        sa.Column("domain", sa.String(length=255), nullable=True),
        sa.Column("port_min", sa.Integer(), nullable=True),
        sa.Column("port_max", sa.Integer(), nullable=True),
        sa.Column("command", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("action IN ('allow', 'deny')", name=op.f("ck_rules_action")),
        sa.CheckConstraint(
            "(port_min IS NULL AND port_max IS NULL) OR "
            "(port_min >= 0 AND port_min <= port_max AND port_max <= 65535)",
            name=op.f("ck_rules_ports"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rules")),
    )
    op.create_index("ix_rules_position", "rules", ["position", "id"])
    with op.batch_alter_table("users") as batch:
        # NULL: no limit, never expires.
        batch.add_column(sa.Column("max_connections", sa.Integer(), nullable=True))
        batch.add_column(
            sa.Column("max_bandwidth_bytes_per_second", sa.BigInteger(), nullable=True)
        )
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("expires_at")
        batch.drop_column("max_bandwidth_bytes_per_second")
        batch.drop_column("max_connections")
    op.drop_index("ix_rules_position", table_name="rules")
    op.drop_table("rules")
