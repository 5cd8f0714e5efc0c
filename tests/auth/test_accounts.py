"""Account operations for the CLI: validation, hashing, and their effect on a real store."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.auth import accounts, passwords
from socksauth.errors import UserError
from socksauth.store.users import SqlUserStore


@pytest.fixture
def store(engine: AsyncEngine) -> SqlUserStore:
    return SqlUserStore(engine)


@pytest.mark.parametrize(
    "username",
    ["a", "alice", "Alice.Smith@example.com", "zoë", "用户", "a b", "x" * 255, "é" * 127],
)
def test_valid_usernames_are_returned_unchanged(username: str) -> None:
    assert accounts.validate_username(username) == username


@pytest.mark.parametrize(
    ("username", "message"),
    [
        ("", "must not be empty"),
        ("x" * 256, "256 bytes in UTF-8; RFC 1929 allows at most 255"),
        ("é" * 128, "256 bytes in UTF-8"),
        ("al\nice", r"control characters \(found U\+000A\)"),
        ("al\x00ice", r"control characters \(found U\+0000\)"),
        ("al\x7fice", r"control characters \(found U\+007F\)"),
        ("al\u2028ice", r"control characters \(found U\+2028\)"),
        (" alice", "must not start or end with whitespace"),
        ("alice ", "must not start or end with whitespace"),
        ("alice\u3000", "must not start or end with whitespace"),
        ("al\udcffice", "not valid Unicode"),
    ],
)
def test_invalid_usernames_are_refused_with_a_specific_message(username: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        accounts.validate_username(username)


@pytest.mark.parametrize("password", ["p", "x" * 255, "é" * 127, " spaces are fine ", "tab\there"])
def test_valid_passwords_are_returned_unchanged(password: str) -> None:
    assert accounts.validate_password(password) == password


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("", "must not be empty"),
        ("x" * 256, "longer than 255 bytes"),
        ("é" * 128, "longer than 255 bytes"),
        ("pa\udcffss", "not valid Unicode"),
    ],
)
def test_invalid_passwords_are_refused_without_quoting_them(password: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as caught:
        accounts.validate_password(password)
    if password:
        assert password not in str(caught.value)


async def test_add_user_stores_an_argon2id_hash_of_the_password(store: SqlUserStore) -> None:
    record = await accounts.add_user(store, "alice", "s3cret")
    assert record.username == "alice"
    assert record.enabled
    stored = await store.get_user("alice")
    assert stored is not None
    assert stored.password_hash.startswith("$argon2id$")
    assert passwords.verify_password("s3cret", stored.password_hash)


async def test_add_user_validates_before_touching_the_store(store: SqlUserStore) -> None:
    with pytest.raises(UserError, match="whitespace"):
        await accounts.add_user(store, "alice ", "pw")
    with pytest.raises(UserError, match="password must not be empty"):
        await accounts.add_user(store, "alice", "")
    assert list(await accounts.list_users(store)) == []


async def test_add_user_twice_is_a_user_error(store: SqlUserStore) -> None:
    await accounts.add_user(store, "alice", "pw")
    with pytest.raises(UserError, match="already exists"):
        await accounts.add_user(store, "alice", "pw")


async def test_change_password_replaces_the_hash(store: SqlUserStore) -> None:
    await accounts.add_user(store, "alice", "old")
    await accounts.change_password(store, "alice", "new")
    stored = await store.get_user("alice")
    assert stored is not None
    assert passwords.verify_password("new", stored.password_hash)
    assert not passwords.verify_password("old", stored.password_hash)


async def test_change_password_of_unknown_user_is_a_user_error(store: SqlUserStore) -> None:
    with pytest.raises(UserError, match="no user named 'ghost'"):
        await accounts.change_password(store, "ghost", "pw")


async def test_change_password_validates_the_password(store: SqlUserStore) -> None:
    await accounts.add_user(store, "alice", "old")
    with pytest.raises(UserError, match="longer than 255 bytes"):
        await accounts.change_password(store, "alice", "x" * 256)


async def test_disable_and_enable(store: SqlUserStore) -> None:
    await accounts.add_user(store, "alice", "pw")
    await accounts.disable(store, "alice")
    disabled = await store.get_user("alice")
    assert disabled is not None
    assert not disabled.enabled
    await accounts.enable(store, "alice")
    enabled = await store.get_user("alice")
    assert enabled is not None
    assert enabled.enabled


@pytest.mark.parametrize("operation", [accounts.enable, accounts.disable, accounts.delete])
async def test_operations_on_unknown_users_are_user_errors(
    store: SqlUserStore, operation: object
) -> None:
    assert callable(operation)
    with pytest.raises(UserError, match="no user named 'ghost'"):
        await operation(store, "ghost")


async def test_delete_and_list(store: SqlUserStore) -> None:
    await accounts.add_user(store, "bob", "pw")
    await accounts.add_user(store, "alice", "pw")
    assert [user.username for user in await accounts.list_users(store)] == ["alice", "bob"]
    await accounts.delete(store, "alice")
    assert [user.username for user in await accounts.list_users(store)] == ["bob"]
