"""Per-user traffic quotas, client networks and egress addresses; traffic counted per node.

``users`` gains ``quota_bytes`` and ``quota_period`` (``day``, ``week``, ``month`` or ``Nd``,
a rolling window of N days; both NULL: no quota), ``client_networks`` (space-separated CIDRs
the user may log in from; NULL: anywhere) and ``egress`` (space-separated local addresses or
``pool:NAME`` references the user's outbound traffic leaves from; NULL: the system's choice).

``traffic_usage`` holds the bytes each node relayed for each user, per hour (the hour starts in
the configured quota time zone): a quota is the sum over every node of the hours in its
period, so it holds across nodes and survives restarts. No trigger watches this table: it
changes every second and says nothing to a cache.

The users trigger that bumps ``store_revision`` (migration 0004) fires on an update of the
columns it lists: it is recreated with the new columns, so a quota, network or egress change
reaches every node at once.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As migration 0007 left them (0004's, and is_admin).
_OLD_USER_COLUMNS = (
    "username, password_hash, enabled, max_connections, max_bandwidth_bytes_per_second, "
    "expires_at, is_admin"
)
_NEW_USER_COLUMNS = _OLD_USER_COLUMNS + ", quota_bytes, quota_period, client_networks, egress"
_BUMP = "UPDATE store_revision SET revision = revision + 1 WHERE id = 1"


def _watch_user_updates(columns: str) -> None:
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
    # Plain ADD COLUMN, no batch rebuild: SQLite keeps the table's triggers.
    op.add_column("users", sa.Column("quota_bytes", sa.BigInteger(), nullable=True))
    op.add_column("users", sa.Column("quota_period", sa.String(length=16), nullable=True))
    op.add_column("users", sa.Column("client_networks", sa.String(length=2000), nullable=True))
    op.add_column("users", sa.Column("egress", sa.String(length=2000), nullable=True))
    op.create_table(
        "traffic_usage",
        sa.Column("username", sa.String(length=255), nullable=False),
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("bucket_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("username", "bucket_start", "node", name=op.f("pk_traffic_usage")),
    )
    op.create_index("ix_traffic_usage_bucket_start", "traffic_usage", ["bucket_start"])
    _watch_user_updates(_NEW_USER_COLUMNS)


def downgrade() -> None:
    op.drop_index("ix_traffic_usage_bucket_start", table_name="traffic_usage")
    op.drop_table("traffic_usage")
    postgresql = op.get_bind().dialect.name == "postgresql"
    if postgresql:
        # The trigger depends on the columns it lists: list the old ones before dropping.
        _watch_user_updates(_OLD_USER_COLUMNS)
    with op.batch_alter_table("users") as batch:
        batch.drop_column("egress")
        batch.drop_column("client_networks")
        batch.drop_column("quota_period")
        batch.drop_column("quota_bytes")
    if not postgresql:
        # The batch rebuilt ``users`` without its triggers: migration 0004's, once more.
        for event in ("INSERT", "DELETE", f"UPDATE OF {_OLD_USER_COLUMNS}"):
            name = f"users_{event.split()[0].lower()}_changed"
            op.execute(f"CREATE TRIGGER {name} AFTER {event} ON users BEGIN {_BUMP}; END")
