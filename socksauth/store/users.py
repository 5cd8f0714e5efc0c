"""SqlUserStore: the accounts table behind the UserStore Protocol."""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.errors import UserError
from socksauth.store.database import database_errors
from socksauth.store.interfaces import UserRecord
from socksauth.store.models import UserRow
from socksauth.store.throttle import clear_pairs
from socksauth.store.times import from_db, to_utc

# The Table itself: a Core executemany UPDATE with bound names needs its ``.c`` columns.
_USERS = UserRow.metadata.tables[UserRow.__tablename__]
_COLUMNS = (
    UserRow.username,
    UserRow.password_hash,
    UserRow.enabled,
    UserRow.created_at,
    UserRow.updated_at,
    UserRow.last_login_at,
    UserRow.max_connections,
    UserRow.max_bandwidth_bytes_per_second,
    UserRow.expires_at,
    UserRow.quota_bytes,
    UserRow.quota_period,
    UserRow.client_networks,
    UserRow.egress,
    UserRow.is_admin,
)


class SqlUserStore:
    """Accounts in SQL; every method is one short transaction on ``engine``."""

    __slots__ = ("_engine",)

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def get_user(self, username: str) -> UserRecord | None:
        """The account named ``username`` (exact match), or None.

        Raises:
            DatabaseError: the database could not be asked (a login then cannot be checked).
        """
        with database_errors():
            async with self._engine.connect() as conn:
                result = await conn.execute(select(*_COLUMNS).where(UserRow.username == username))
                row = result.one_or_none()
        return None if row is None else _record(row)

    async def replace_password_hash(self, username: str, old_hash: str, new_hash: str) -> None:
        """Store a rehashed password, only if the stored hash is still ``old_hash``.

        Compare-and-set, so a rehash after login never overwrites a password that an
        administrator changed meanwhile; a lost race is not an error.
        """
        async with self._engine.begin() as conn:
            await conn.execute(
                update(UserRow)
                .where(UserRow.username == username, UserRow.password_hash == old_hash)
                .values(password_hash=new_hash, updated_at=_now())
            )

    async def record_logins(self, logins: Mapping[str, datetime]) -> None:
        """Set last_login_at for each username in one executemany UPDATE.

        Names without an account (deleted since the login) are skipped silently.

        Raises:
            ValueError: a datetime is naive; only aware datetimes have a UTC instant.
        """
        if not logins:
            return
        # Bind names differ from column names: SQLAlchemy reserves a column's own name
        # for the value in SET.
        params = [
            {"b_username": username, "b_last_login_at": to_utc(at)}
            for username, at in logins.items()
        ]
        statement = (
            update(_USERS)
            .where(_USERS.c.username == bindparam("b_username"))
            .values(last_login_at=bindparam("b_last_login_at"))
        )
        async with self._engine.begin() as conn:
            await conn.execute(statement, params)

    async def add_user(self, username: str, password_hash: str) -> UserRecord:
        """Create an enabled account; UserError if the name is taken."""
        now = _now()
        try:
            async with self._engine.begin() as conn:
                await conn.execute(
                    insert(UserRow).values(
                        username=username,
                        password_hash=password_hash,
                        enabled=True,
                        created_at=now,
                        updated_at=now,
                        last_login_at=None,
                    )
                )
        except IntegrityError:
            # The unique constraint decides, so two concurrent adds cannot both succeed.
            raise UserError(f"user {username!r} already exists") from None
        return UserRecord(
            username=username,
            password_hash=password_hash,
            enabled=True,
            created_at=now,
            updated_at=now,
            last_login_at=None,
        )

    async def set_password_hash(self, username: str, password_hash: str) -> None:
        """Replace the password hash; UserError if there is no such user. The user's login
        throttle counters and lockouts are cleared on every node (an admin's reset)."""
        await self._update_one(username, clear_throttle=True, password_hash=password_hash)

    async def set_enabled(self, username: str, enabled: bool) -> None:
        """Enable or disable; UserError if there is no such user. Enabling also clears the
        user's login throttle counters and lockouts on every node."""
        await self._update_one(username, clear_throttle=enabled, enabled=enabled)

    async def delete_user(self, username: str) -> None:
        """Delete the account; UserError if there is no such user."""
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(UserRow).where(UserRow.username == username))
        if result.rowcount == 0:
            raise _unknown(username)

    async def list_users(self) -> Sequence[UserRecord]:
        """Every account, ordered by username (code point order on every database)."""
        async with self._engine.connect() as conn:
            result = await conn.execute(select(*_COLUMNS))
            rows = result.all()
        # Sorted here, not by ORDER BY: PostgreSQL orders by the database's collation, which
        # differs between servers and from SQLite's binary order.
        return sorted((_record(row) for row in rows), key=lambda record: record.username)

    async def set_limits(
        self,
        username: str,
        *,
        max_connections: int | None,
        max_bandwidth_bytes_per_second: int | None,
        expires_at: datetime | None,
    ) -> None:
        """Replace the three limits (None: none); UserError if there is no such user."""
        await self._update_one(
            username,
            max_connections=max_connections,
            max_bandwidth_bytes_per_second=max_bandwidth_bytes_per_second,
            expires_at=None if expires_at is None else to_utc(expires_at),
        )

    async def set_quota(
        self, username: str, quota_bytes: int | None, quota_period: str | None
    ) -> None:
        """Replace the traffic quota (None: none); UserError if there is no such user."""
        await self._update_one(
            username,
            quota_bytes=quota_bytes,
            quota_period=None if quota_bytes is None else quota_period,
        )

    async def set_client_networks(self, username: str, networks: Sequence[str]) -> None:
        """Replace the networks the user may log in from (empty: anywhere)."""
        await self._update_one(username, client_networks=_joined(networks))

    async def set_egress(self, username: str, egress: Sequence[str]) -> None:
        """Replace the user's egress addresses and pools (empty: the system's choice)."""
        await self._update_one(username, egress=_joined(egress))

    async def egress_entries(self) -> set[str]:
        """Every distinct egress entry of any user."""
        async with self._engine.connect() as conn:
            result = await conn.execute(select(UserRow.egress).where(UserRow.egress.is_not(None)))
            return {entry for (text,) in result for entry in _split(text)}

    async def get_users(self, usernames: Collection[str]) -> Mapping[str, UserRecord]:
        """The accounts among ``usernames`` that exist, by name, in one query."""
        if not usernames:
            return {}
        async with self._engine.connect() as conn:
            result = await conn.execute(
                select(*_COLUMNS).where(UserRow.username.in_(list(usernames)))
            )
            rows = result.all()
        return {row.username: _record(row) for row in rows}

    async def _update_one(
        self, username: str, *, clear_throttle: bool = False, **values: Any
    ) -> None:
        async with self._engine.begin() as conn:
            result = await conn.execute(
                update(UserRow)
                .where(UserRow.username == username)
                .values(**values, updated_at=_now())
            )
            if result.rowcount == 0:
                raise _unknown(username)  # nothing was changed: the rollback is a no-op
            if clear_throttle:
                # In the same transaction: the new password and the reset go together.
                await clear_pairs(conn, username, None, time.time())


def _unknown(username: str) -> UserError:
    return UserError(f"no user named {username!r}")


def _now() -> datetime:
    return datetime.now(UTC)


def _joined(items: Sequence[str]) -> str | None:
    return " ".join(items) if items else None


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(text.split()) if text else ()


def _record(row: Any) -> UserRecord:
    return UserRecord(
        username=row.username,
        password_hash=row.password_hash,
        enabled=row.enabled,
        created_at=from_db(row.created_at),
        updated_at=from_db(row.updated_at),
        last_login_at=None if row.last_login_at is None else from_db(row.last_login_at),
        max_connections=row.max_connections,
        max_bandwidth_bytes_per_second=row.max_bandwidth_bytes_per_second,
        expires_at=None if row.expires_at is None else from_db(row.expires_at),
        quota_bytes=row.quota_bytes,
        quota_period=row.quota_period,
        client_networks=_split(row.client_networks),
        egress=_split(row.egress),
        is_admin=bool(row.is_admin),
    )
