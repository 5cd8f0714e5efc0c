"""Account administration for the CLI: validate names and passwords, hash off the loop, store."""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import unicodedata
from collections.abc import Sequence
from datetime import datetime

from socksauth.auth.passwords import hash_password
from socksauth.errors import UserError
from socksauth.store.interfaces import UserRecord, UserStore

# RFC 1929 §2: "The UNAME field contains the username ..." in one length octet, and
# "The PASSWD field contains the password" likewise: at most 255 bytes each on the wire.
MAX_USERNAME_BYTES = 255
MAX_PASSWORD_BYTES = 255

# Unicode categories a username may not contain: control characters, and line and paragraph
# separators, which would let a name forge lines in logs and audit output.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})


def validate_username(username: str) -> str:
    """``username`` unchanged if a client can send it and an operator can read it.

    Raises:
        UserError: empty, over 255 bytes in UTF-8, not encodable, has control characters,
            or starts or ends with whitespace.
    """
    encoded = _encode("username", username)
    if not encoded:
        raise UserError("username must not be empty")
    if len(encoded) > MAX_USERNAME_BYTES:
        raise UserError(
            f"username is {len(encoded)} bytes in UTF-8; RFC 1929 allows at most "
            f"{MAX_USERNAME_BYTES}"
        )
    for character in username:
        if unicodedata.category(character) in _FORBIDDEN_CATEGORIES:
            raise UserError(
                f"username must not contain control characters (found U+{ord(character):04X})"
            )
    if username[0].isspace() or username[-1].isspace():
        raise UserError("username must not start or end with whitespace")
    return username


def validate_password(password: str) -> str:
    """``password`` unchanged if a client can send it (1 to 255 bytes in UTF-8).

    Raises:
        UserError: empty, over 255 bytes, or not encodable. The message never quotes it.
    """
    encoded = _encode("password", password)
    if not encoded:
        raise UserError("password must not be empty")
    if len(encoded) > MAX_PASSWORD_BYTES:
        raise UserError(
            f"password is longer than {MAX_PASSWORD_BYTES} bytes in UTF-8, "
            "which RFC 1929 clients cannot send"
        )
    return password


async def add_user(store: UserStore, username: str, password: str) -> UserRecord:
    """Create an enabled account; UserError for a bad name or password or a taken name."""
    validate_username(username)
    validate_password(password)
    password_hash = await _hash(password)
    return await store.add_user(username, password_hash)


async def change_password(store: UserStore, username: str, password: str) -> None:
    """Give ``username`` a new password; UserError for a bad password or an unknown user."""
    validate_password(password)
    password_hash = await _hash(password)
    await store.set_password_hash(username, password_hash)


async def enable(store: UserStore, username: str) -> None:
    """Let ``username`` log in again; UserError for an unknown user."""
    await store.set_enabled(username, True)


async def disable(store: UserStore, username: str) -> None:
    """Refuse ``username``'s logins, keeping the account; UserError for an unknown user."""
    await store.set_enabled(username, False)


async def delete(store: UserStore, username: str) -> None:
    """Remove ``username``'s account; UserError for an unknown user."""
    await store.delete_user(username)


class Keep(enum.Enum):
    """A limit that ``set_limits`` leaves as it is."""

    KEEP = "keep"


KEEP = Keep.KEEP


async def set_limits(
    store: UserStore,
    username: str,
    *,
    max_connections: int | Keep | None = KEEP,
    max_bandwidth_bytes_per_second: int | Keep | None = KEEP,
    expires_at: datetime | Keep | None = KEEP,
    quota: tuple[int, str] | Keep | None = KEEP,
    client_networks: Sequence[str] | Keep = KEEP,
    egress: Sequence[str] | Keep = KEEP,
) -> UserRecord:
    """Change some of ``username``'s limits (None: no limit / never expires); the account as
    now stored. UserError for an unknown user or a limit below 1.

    ``quota``: (bytes, period) of traffic both ways (server/quota.py); ``client_networks``:
    CIDRs the user may log in from (empty: anywhere); ``egress``: local addresses or
    ``pool:NAME`` its outbound traffic leaves from (empty: the system's choice)."""
    user = await store.get_user(username)
    if user is None:
        raise UserError(f"no user named {username!r}")
    for name, value in (
        ("max connections", max_connections),
        ("max bandwidth", max_bandwidth_bytes_per_second),
    ):
        if isinstance(value, int) and value < 1:
            raise UserError(f"{name} must be at least 1 (or none)")
    if isinstance(expires_at, datetime) and expires_at.utcoffset() is None:
        raise UserError("the expiry needs a time zone")
    changed = dataclasses.replace(
        user,
        max_connections=user.max_connections if max_connections is KEEP else max_connections,
        max_bandwidth_bytes_per_second=user.max_bandwidth_bytes_per_second
        if max_bandwidth_bytes_per_second is KEEP
        else max_bandwidth_bytes_per_second,
        expires_at=user.expires_at if expires_at is KEEP else expires_at,
    )
    if isinstance(quota, tuple) and quota[0] < 1:
        raise UserError("the quota must be at least 1 byte (or none)")
    if not isinstance(quota, Keep):
        changed = dataclasses.replace(
            changed,
            quota_bytes=None if quota is None else quota[0],
            quota_period=None if quota is None else quota[1],
        )
    if not isinstance(client_networks, Keep):
        changed = dataclasses.replace(changed, client_networks=tuple(client_networks))
    if not isinstance(egress, Keep):
        changed = dataclasses.replace(changed, egress=tuple(egress))
    await store.set_limits(
        username,
        max_connections=changed.max_connections,
        max_bandwidth_bytes_per_second=changed.max_bandwidth_bytes_per_second,
        expires_at=changed.expires_at,
    )
    if not isinstance(quota, Keep):
        await store.set_quota(username, changed.quota_bytes, changed.quota_period)
    if not isinstance(client_networks, Keep):
        await store.set_client_networks(username, changed.client_networks)
    if not isinstance(egress, Keep):
        await store.set_egress(username, changed.egress)
    return changed


async def list_users(store: UserStore) -> Sequence[UserRecord]:
    """Every account, ordered by username."""
    return await store.list_users()


async def _hash(password: str) -> str:
    # argon2 takes tens of milliseconds of CPU and 19 MiB; never on the event loop.
    return await asyncio.to_thread(hash_password, password)


def _encode(what: str, value: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (from surrogateescape'd argv, for instance) have no UTF-8 form.
        raise UserError(f"{what} is not valid Unicode text") from None
