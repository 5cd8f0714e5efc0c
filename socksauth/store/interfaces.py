"""What the rest of socksauth needs from storage, as small Protocols and plain records.

No SQLAlchemy here: this is the only store module that auth, audit and server import.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True, kw_only=True, repr=False)
class UserRecord:
    """An account as stored. ``password_hash`` is a passlib hash string, never a password."""

    username: str
    password_hash: str
    enabled: bool
    created_at: datetime
    updated_at: datetime
    last_login_at: datetime | None

    def __repr__(self) -> str:
        return (
            f"UserRecord(username={self.username!r}, enabled={self.enabled}, "
            f"created_at={self.created_at!r}, last_login_at={self.last_login_at!r})"
        )


class UserLookup(Protocol):
    """What the authenticator reads and writes on the hot path."""

    async def get_user(self, username: str) -> UserRecord | None:
        """The account named ``username`` (exact match), or None."""
        ...

    async def replace_password_hash(self, username: str, old_hash: str, new_hash: str) -> None:
        """Store a rehashed password, only if the stored hash is still ``old_hash``."""
        ...

    async def record_logins(self, logins: Mapping[str, datetime]) -> None:
        """Set last_login_at for each username (batched by the caller)."""
        ...


class UserStore(UserLookup, Protocol):
    """Account administration, for the CLI."""

    async def add_user(self, username: str, password_hash: str) -> UserRecord:
        """Create an enabled account; UserError if the name is taken."""
        ...

    async def set_password_hash(self, username: str, password_hash: str) -> None:
        """Replace the password hash; UserError if there is no such user."""
        ...

    async def set_enabled(self, username: str, enabled: bool) -> None:
        """Enable or disable; UserError if there is no such user."""
        ...

    async def delete_user(self, username: str) -> None:
        """Delete the account; UserError if there is no such user."""
        ...

    async def list_users(self) -> Sequence[UserRecord]:
        """Every account, ordered by username."""
        ...
