"""Live sessions, node heartbeats, kicks and dashboard credentials.

``nodes`` has one row per running node (process), renewed every few seconds: an open audit
row whose node stopped renewing belongs to a process that died, and is not shown as live.

``audit_events`` gets the interim counts of an open tunnel (``updated_at`` and the rates
each way over the last interval; its byte columns are updated too) and a kick:
``kill_requested_at`` and ``killed_by`` (who asked) are set by `socksauth sessions kill`; the
node holding the tunnel ends it and completes the row with outcome ``killed``.

``admin_tokens`` holds the SHA-256 of each dashboard token (never the token), and
``users.is_admin`` marks accounts that may open the dashboard with HTTP Basic. The change
triggers of 0004 are recreated to watch ``is_admin`` too, so a withdrawn right applies on
every node at once.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_USER_COLUMNS = (
    "username, password_hash, enabled, max_connections, max_bandwidth_bytes_per_second, "
    "expires_at"
)
_BUMP = "UPDATE store_revision SET revision = revision + 1 WHERE id = 1"


def _user_trigger(columns: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER users_changed ON users")
        op.execute(
            f"CREATE TRIGGER users_changed AFTER INSERT OR DELETE OR UPDATE OF {columns} "
            "ON users FOR EACH STATEMENT EXECUTE FUNCTION socksauth_changed()"
        )
    else:
        op.execute("DROP TRIGGER users_update_changed")
        op.execute(
            f"CREATE TRIGGER users_update_changed AFTER UPDATE OF {columns} ON users "
            f"BEGIN {_BUMP}; END"
        )


def upgrade() -> None:
    op.create_table(
        "nodes",
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        # Clients connected at the last heartbeat, for the dashboard.
        sa.Column("connections", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("version", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_nodes")),
    )
    # Plain ADD COLUMN (no batch): SQLite keeps the table, and so its triggers.
    op.add_column(
        "audit_events", sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("audit_events", sa.Column("rate_from_client", sa.Float(), nullable=True))
    op.add_column("audit_events", sa.Column("rate_to_client", sa.Float(), nullable=True))
    op.add_column(
        "audit_events", sa.Column("kill_requested_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.add_column("audit_events", sa.Column("killed_by", sa.String(length=255), nullable=True))
    op.create_table(
        "admin_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=255), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_tokens")),
        sa.UniqueConstraint("name", name=op.f("uq_admin_tokens_name")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_admin_tokens_token_hash")),
    )
    op.add_column(
        "users",
        sa.Column("is_admin", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    _user_trigger(_USER_COLUMNS + ", is_admin")


def downgrade() -> None:
    _user_trigger(_USER_COLUMNS)
    with op.batch_alter_table("users") as batch:
        batch.drop_column("is_admin")
    if op.get_bind().dialect.name == "sqlite":
        # Batch mode rebuilt users without its triggers (see 0004): create them again.
        for event in ("INSERT", "DELETE", f"UPDATE OF {_USER_COLUMNS}"):
            name = f"users_{event.split()[0].lower()}_changed"
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
            op.execute(f"CREATE TRIGGER {name} AFTER {event} ON users BEGIN {_BUMP}; END")
    op.drop_table("admin_tokens")
    with op.batch_alter_table("audit_events") as batch:
        for column in ("killed_by", "kill_requested_at", "rate_to_client", "rate_from_client",
                       "updated_at"):
            batch.drop_column(column)
    op.drop_table("nodes")
