"""SqlUserStore against real SQLite and PostgreSQL databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.errors import UserError
from socksauth.store.interfaces import UserStore
from socksauth.store.users import SqlUserStore


@pytest.fixture
def store(engine: AsyncEngine) -> SqlUserStore:
    return SqlUserStore(engine)


def test_sql_user_store_satisfies_the_user_store_protocol(store: SqlUserStore) -> None:
    users: UserStore = store
    assert users is store


async def test_added_user_is_enabled_and_read_back_with_aware_utc_times(
    store: SqlUserStore,
) -> None:
    before = datetime.now(UTC)
    added = await store.add_user("alice", "$argon2id$fake")
    found = await store.get_user("alice")

    assert found is not None
    assert found == added
    assert found.enabled
    assert found.password_hash == "$argon2id$fake"
    assert found.last_login_at is None
    for moment in (found.created_at, found.updated_at):
        assert moment.tzinfo is not None
        assert moment.utcoffset() == timedelta(0)
        assert before - timedelta(seconds=1) <= moment <= datetime.now(UTC)


async def test_unknown_user_is_none(store: SqlUserStore) -> None:
    assert await store.get_user("nobody") is None


async def test_lookup_is_exact_and_case_sensitive(store: SqlUserStore) -> None:
    await store.add_user("Alice", "h")
    assert await store.get_user("alice") is None
    assert await store.get_user("Alice ") is None


async def test_duplicate_username_is_a_user_error(store: SqlUserStore) -> None:
    await store.add_user("alice", "h1")
    with pytest.raises(UserError, match="'alice' already exists"):
        await store.add_user("alice", "h2")
    found = await store.get_user("alice")
    assert found is not None
    assert found.password_hash == "h1"


async def test_non_ascii_username_round_trips(store: SqlUserStore) -> None:
    await store.add_user("zoë-ünïcode-用户", "h")
    found = await store.get_user("zoë-ünïcode-用户")
    assert found is not None


async def test_set_password_hash_replaces_the_hash_and_bumps_updated_at(
    store: SqlUserStore,
) -> None:
    added = await store.add_user("alice", "old")
    await store.set_password_hash("alice", "new")
    found = await store.get_user("alice")
    assert found is not None
    assert found.password_hash == "new"
    assert found.updated_at >= added.updated_at
    assert found.created_at == added.created_at


async def test_set_password_hash_of_unknown_user_is_a_user_error(store: SqlUserStore) -> None:
    with pytest.raises(UserError, match="no user named 'ghost'"):
        await store.set_password_hash("ghost", "h")


async def test_set_enabled_disables_and_enables(store: SqlUserStore) -> None:
    await store.add_user("alice", "h")
    await store.set_enabled("alice", False)
    disabled = await store.get_user("alice")
    assert disabled is not None
    assert not disabled.enabled
    await store.set_enabled("alice", True)
    enabled = await store.get_user("alice")
    assert enabled is not None
    assert enabled.enabled


async def test_set_enabled_of_unknown_user_is_a_user_error(store: SqlUserStore) -> None:
    with pytest.raises(UserError, match="no user named 'ghost'"):
        await store.set_enabled("ghost", False)


async def test_delete_user_removes_only_that_user(store: SqlUserStore) -> None:
    await store.add_user("alice", "h")
    await store.add_user("bob", "h")
    await store.delete_user("alice")
    assert await store.get_user("alice") is None
    assert await store.get_user("bob") is not None


async def test_delete_of_unknown_user_is_a_user_error(store: SqlUserStore) -> None:
    with pytest.raises(UserError, match="no user named 'ghost'"):
        await store.delete_user("ghost")


async def test_deleted_name_can_be_added_again(store: SqlUserStore) -> None:
    await store.add_user("alice", "h1")
    await store.delete_user("alice")
    await store.add_user("alice", "h2")
    found = await store.get_user("alice")
    assert found is not None
    assert found.password_hash == "h2"


async def test_list_users_is_every_user_in_code_point_order(store: SqlUserStore) -> None:
    for name in ["bob", "Zed", "alice", "_x", "ålesund"]:
        await store.add_user(name, "h")
    listed = await store.list_users()
    assert [user.username for user in listed] == ["Zed", "_x", "alice", "bob", "ålesund"]


async def test_list_users_of_empty_store_is_empty(store: SqlUserStore) -> None:
    assert list(await store.list_users()) == []


async def test_replace_password_hash_swaps_when_the_old_hash_matches(store: SqlUserStore) -> None:
    await store.add_user("alice", "old")
    await store.replace_password_hash("alice", "old", "rehashed")
    found = await store.get_user("alice")
    assert found is not None
    assert found.password_hash == "rehashed"


async def test_replace_password_hash_keeps_a_hash_changed_meanwhile(store: SqlUserStore) -> None:
    await store.add_user("alice", "old")
    await store.set_password_hash("alice", "set-by-admin")
    await store.replace_password_hash("alice", "old", "rehashed")
    found = await store.get_user("alice")
    assert found is not None
    assert found.password_hash == "set-by-admin"


async def test_replace_password_hash_of_unknown_user_does_nothing(store: SqlUserStore) -> None:
    await store.replace_password_hash("ghost", "old", "new")
    assert await store.get_user("ghost") is None


async def test_record_logins_sets_last_login_in_utc_for_each_user(store: SqlUserStore) -> None:
    await store.add_user("alice", "h")
    await store.add_user("bob", "h")
    await store.add_user("carol", "h")
    alice_at = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    # Given in UTC+2, stored and returned as the same instant in UTC.
    bob_at = datetime(2026, 1, 2, 5, 0, 0, tzinfo=timezone(timedelta(hours=2)))

    await store.record_logins({"alice": alice_at, "bob": bob_at, "deleted-meanwhile": alice_at})

    alice, bob, carol = [await store.get_user(name) for name in ("alice", "bob", "carol")]
    assert alice is not None and bob is not None and carol is not None
    assert alice.last_login_at == alice_at
    assert alice.last_login_at.tzinfo is UTC
    assert bob.last_login_at == datetime(2026, 1, 2, 3, 0, 0, tzinfo=UTC)
    assert bob.last_login_at.utcoffset() == timedelta(0)
    assert carol.last_login_at is None


async def test_record_logins_with_nothing_is_a_no_op(store: SqlUserStore) -> None:
    await store.record_logins({})


async def test_record_logins_refuses_naive_datetimes(store: SqlUserStore) -> None:
    await store.add_user("alice", "h")
    with pytest.raises(ValueError, match="timezone-aware"):
        await store.record_logins({"alice": datetime(2026, 1, 1)})


async def test_user_record_repr_hides_the_hash(store: SqlUserStore) -> None:
    record = await store.add_user("alice", "$argon2id$secret-hash")
    assert "secret-hash" not in repr(record)
