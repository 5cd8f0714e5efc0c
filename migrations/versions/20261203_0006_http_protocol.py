"""The audit tells SOCKS5 from HTTP proxy clients, and counts forwarded HTTP requests.

``protocol`` is what the client spoke (its first byte decides): ``socks5`` or ``http``; rows
written before this revision are SOCKS5, the only protocol there was. ``requests`` counts the
absolute-form ``http://`` requests one HTTP client connection had forwarded (0 for SOCKS5
and for HTTP CONNECT tunnels).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A constant default: PostgreSQL adds such a column without rewriting the table, and
    # SQLite's ADD COLUMN never rewrites it; batch mode here does not recreate the table.
    with op.batch_alter_table("audit_events") as batch:
        batch.add_column(
            sa.Column("protocol", sa.String(length=16), nullable=False, server_default="socks5")
        )
        batch.add_column(sa.Column("requests", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("requests")
        batch.drop_column("protocol")
