"""Change tracking for caches on every node, and per-node connection leases.

``store_revision`` is one row whose counter every change of an account or a rule bumps, in the
same transaction, by trigger: so no writer (this CLI, another node, an administrator's SQL) can
change a user without the nodes seeing it. On PostgreSQL the trigger also sends NOTIFY
``socksauth_changes``, which nodes LISTEN to; SQLite nodes poll the counter.

``last_login_at`` is not watched: it changes on every login and says nothing to a cache.

SQLite's batch mode rebuilds a table without its triggers: a later migration that alters
``users`` or ``rules`` in batch mode must create these triggers again (tests/store checks that
every kind of change bumps the revision).

``connection_leases`` holds, per node and user, how many connections the node has open, so a
per-user limit holds across nodes (socksauth/store/leases.py).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The columns whose change matters to a node: everything but last_login_at.
_USER_COLUMNS = (
    "username, password_hash, enabled, max_connections, max_bandwidth_bytes_per_second, "
    "expires_at"
)
_BUMP = "UPDATE store_revision SET revision = revision + 1 WHERE id = 1"


def upgrade() -> None:
    op.create_table(
        "store_revision",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("ck_store_revision_single_row")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_store_revision")),
    )
    op.execute("INSERT INTO store_revision (id, revision) VALUES (1, 0)")
    op.create_table(
        "connection_leases",
        sa.Column("node", sa.String(length=255), nullable=False),
        sa.Column("username", sa.String(length=255), nullable=False),
        sa.Column("connections", sa.Integer(), nullable=False),
        # A lease not renewed for a while belongs to a node that died: it no longer counts.
        sa.Column("renewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("node", "username", name=op.f("pk_connection_leases")),
    )
    op.create_index("ix_connection_leases_username", "connection_leases", ["username"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            f"""
            CREATE FUNCTION socksauth_changed() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                {_BUMP};
                PERFORM pg_notify('socksauth_changes', TG_TABLE_NAME);
                RETURN NULL;
            END
            $$
            """
        )
        op.execute(
            f"CREATE TRIGGER users_changed AFTER INSERT OR DELETE OR UPDATE OF {_USER_COLUMNS} "
            "ON users FOR EACH STATEMENT EXECUTE FUNCTION socksauth_changed()"
        )
        op.execute(
            "CREATE TRIGGER rules_changed AFTER INSERT OR DELETE OR UPDATE "
            "ON rules FOR EACH STATEMENT EXECUTE FUNCTION socksauth_changed()"
        )
    else:
        # SQLite has row triggers only, one event each.
        for table, event in (
            ("users", "INSERT"),
            ("users", "DELETE"),
            ("users", f"UPDATE OF {_USER_COLUMNS}"),
            ("rules", "INSERT"),
            ("rules", "DELETE"),
            ("rules", "UPDATE"),
        ):
            name = f"{table}_{event.split()[0].lower()}_changed"
            op.execute(f"CREATE TRIGGER {name} AFTER {event} ON {table} BEGIN {_BUMP}; END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER rules_changed ON rules")
        op.execute("DROP TRIGGER users_changed ON users")
        op.execute("DROP FUNCTION socksauth_changed()")
    else:
        for table in ("users", "rules"):
            for event in ("insert", "delete", "update"):
                op.execute(f"DROP TRIGGER {table}_{event}_changed")
    op.drop_index("ix_connection_leases_username", table_name="connection_leases")
    op.drop_table("connection_leases")
    op.drop_table("store_revision")
