"""SqlAdminCredentials: dashboard tokens (their SHA-256 only) and the accounts marked admin."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.errors import UserError
from socksauth.store.database import database_errors
from socksauth.store.models import AdminTokenRow, UserRow
from socksauth.store.times import from_db


class SqlAdminCredentials:
    """AdminCredentials in SQL; each method is one short transaction."""

    __slots__ = ("_engine",)

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add_token(self, name: str, token_hash: str) -> None:
        """Store a token's hash under ``name``; UserError if the name is taken."""
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    insert(AdminTokenRow).values(
                        name=name, token_hash=token_hash, created_at=datetime.now(UTC)
                    )
                )
        except IntegrityError:
            raise UserError(f"a token named {name!r} exists already") from None

    async def delete_token(self, name: str) -> None:
        """UserError if there is no token named ``name``."""
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(AdminTokenRow).where(AdminTokenRow.name == name))
        if result.rowcount == 0:
            raise UserError(f"no token named {name!r}")

    async def token_names(self) -> Sequence[tuple[str, datetime]]:
        """(name, created) of every token, by name."""
        async with self._engine.connect() as conn:
            rows = (await conn.execute(select(AdminTokenRow.name, AdminTokenRow.created_at))).all()
        return sorted((row.name, from_db(row.created_at)) for row in rows)

    async def token_name(self, token_hash: str) -> str | None:
        """The name of the token with this hash, or None."""
        with database_errors():
            async with self._engine.connect() as conn:
                name = await conn.scalar(
                    select(AdminTokenRow.name).where(AdminTokenRow.token_hash == token_hash)
                )
        return None if name is None else str(name)

    async def set_admin(self, username: str, admin: bool) -> None:
        """Mark or unmark an account as admin; UserError if there is no such user."""
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(UserRow).where(UserRow.username == username).values(is_admin=admin)
            )
        if result.rowcount == 0:
            raise UserError(f"no user named {username!r}")
