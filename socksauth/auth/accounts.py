"""Account administration for the CLI: validate names and passwords, hash off the loop, store."""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Sequence

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
