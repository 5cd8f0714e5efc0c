"""The login throttle's state, shared by every process and node on the database.

``login_throttle`` holds one row per (username, client address) pair that failed recently
or logged in successfully (familiar standing): its counted failures, lockout, the keyed HMACs
(hex) of its last wrong passwords (never a password), and its last success. Each process upserts its failures into it, batched (socksauth/store/throttle.py).

``login_throttle_events`` records lockouts and administrative clears (`socksauth throttle
clear`, `user passwd`, `user enable`); a trigger bumps ``store_revision`` on each insert (and
NOTIFYs on PostgreSQL), so every node hears of them as it hears of account changes.

``login_throttle_key`` is one row: the secret that keys the HMACs, the same on every node so
a repeated wrong password is recognised wherever it is tried again. The first node to start
inserts it (random, from the secrets module; a conflicting insert loses and reads the row).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BUMP = "UPDATE store_revision SET revision = revision + 1 WHERE id = 1"


def upgrade() -> None:
    op.create_table(
        "login_throttle",
        sa.Column("username", sa.String(length=255), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        # Seconds since the epoch: compared with the clocks of every node.
        sa.Column("last_failure_at", sa.Float(), nullable=False),
        sa.Column("locked_until", sa.Float(), nullable=False),
        sa.Column("lockouts", sa.Integer(), nullable=False),
        sa.Column("day_failures", sa.Integer(), nullable=False),
        sa.Column("day_started_at", sa.Float(), nullable=False),
        sa.Column("recent", sa.String(length=400), nullable=False),
        # When the user last logged in successfully from this address (familiar standing);
        # 0: never, or lost.
        sa.Column("familiar_at", sa.Float(), server_default="0", nullable=False),
        sa.PrimaryKeyConstraint("username", "address", name=op.f("pk_login_throttle")),
    )
    op.create_index("ix_login_throttle_last_failure_at", "login_throttle", ["last_failure_at"])
    op.create_table(
        "login_throttle_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("username", sa.String(length=255), nullable=True),
        sa.Column("network", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_throttle_events")),
    )
    op.create_table(
        "login_throttle_key",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("secret", sa.String(length=64), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_login_throttle_key_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_throttle_key")),
    )
    if op.get_bind().dialect.name == "postgresql":
        # socksauth_changed() (migration 0004) bumps the revision and NOTIFYs.
        op.execute(
            "CREATE TRIGGER login_throttle_events_changed AFTER INSERT "
            "ON login_throttle_events FOR EACH STATEMENT EXECUTE FUNCTION socksauth_changed()"
        )
    else:
        op.execute(
            "CREATE TRIGGER login_throttle_events_insert_changed AFTER INSERT "
            f"ON login_throttle_events BEGIN {_BUMP}; END"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER login_throttle_events_changed ON login_throttle_events")
    else:
        op.execute("DROP TRIGGER login_throttle_events_insert_changed")
    op.drop_table("login_throttle_key")
    op.drop_table("login_throttle_events")
    op.drop_index("ix_login_throttle_last_failure_at", table_name="login_throttle")
    op.drop_table("login_throttle")
