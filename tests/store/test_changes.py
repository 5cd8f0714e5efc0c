"""The change counter that triggers bump on every account and rule change, and PostgreSQL's
NOTIFY of it, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.store.changes import SqlChangeFeed
from socksauth.store.database import create_engine
from socksauth.store.interfaces import NewRule
from socksauth.store.rules import SqlRuleStore
from socksauth.store.users import SqlUserStore

Change = Callable[[SqlUserStore, SqlRuleStore], Awaitable[object]]


async def _delete_first_rule(users: SqlUserStore, rules: SqlRuleStore) -> None:
    await rules.delete_rule((await rules.list_rules())[0].id)


CHANGES: dict[str, Change] = {
    "add user": lambda users, rules: users.add_user("carol", "$argon2id$c"),
    "passwd": lambda users, rules: users.set_password_hash("alice", "$argon2id$new"),
    "rehash": lambda users, rules: users.replace_password_hash("alice", "$argon2id$a", "$x"),
    "disable": lambda users, rules: users.set_enabled("alice", False),
    "limits": lambda users, rules: users.set_limits(
        "alice",
        max_connections=3,
        max_bandwidth_bytes_per_second=None,
        expires_at=datetime.now(UTC) + timedelta(days=1),
    ),
    "delete user": lambda users, rules: users.delete_user("alice"),
    "add rule": lambda users, rules: rules.add_rule(NewRule(action="deny", cidr="10.0.0.0/8")),
    "delete rule": _delete_first_rule,
}


@pytest.mark.parametrize("change", list(CHANGES))
async def test_every_change_of_an_account_or_a_rule_moves_the_revision(
    engine: AsyncEngine, change: str
) -> None:
    users, rules = SqlUserStore(engine), SqlRuleStore(engine)
    await users.add_user("alice", "$argon2id$a")
    await rules.add_rule(NewRule(action="allow", cidr="192.0.2.0/24"))
    feed = SqlChangeFeed(engine)
    before = await feed.revision()
    await CHANGES[change](users, rules)
    assert await feed.revision() > before


async def test_a_login_time_is_no_change(engine: AsyncEngine) -> None:
    users = SqlUserStore(engine)
    await users.add_user("alice", "$argon2id$a")
    feed = SqlChangeFeed(engine)
    before = await feed.revision()
    await users.record_logins({"alice": datetime.now(UTC)})
    assert await feed.revision() == before


async def test_a_failed_change_moves_nothing(engine: AsyncEngine) -> None:
    users = SqlUserStore(engine)
    await users.add_user("alice", "$argon2id$a")
    feed = SqlChangeFeed(engine)
    before = await feed.revision()
    with pytest.raises(Exception, match="already exists"):
        await users.add_user("alice", "$argon2id$b")
    assert await feed.revision() == before


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_sqlite_cannot_listen_so_nodes_poll(engine: AsyncEngine) -> None:
    feed = SqlChangeFeed(engine)
    assert await feed.listen(lambda: None) is False


@pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
async def test_postgresql_notifies_a_change_made_through_another_connection_at_once(
    engine: AsyncEngine, database_url: str
) -> None:
    heard = asyncio.Event()
    feed = SqlChangeFeed(engine)
    assert await feed.listen(heard.set)
    assert await feed.listen(heard.set)  # again: still listening, nothing reopened
    other_node = create_engine(database_url)
    try:
        started = time.monotonic()
        await SqlUserStore(other_node).add_user("carol", "$argon2id$c")
        await asyncio.wait_for(heard.wait(), 2.0)
        assert time.monotonic() - started < 2.0
        heard.clear()
        await SqlUserStore(other_node).record_logins({"carol": datetime.now(UTC)})
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(heard.wait(), 0.3)
    finally:
        await feed.close()
        await other_node.dispose()


async def test_maybe_changed_costs_no_query_and_says_yes_after_a_commit_elsewhere(
    engine: AsyncEngine, database_url: str
) -> None:
    """SQLite: a stat of the file and its WAL; PostgreSQL: whether a notification came."""
    feed = SqlChangeFeed(engine)
    heard = asyncio.Event()
    await feed.listen(heard.set)
    other_node = create_engine(database_url)
    queries = 0

    def count(*args: object) -> None:
        nonlocal queries
        queries += 1

    try:
        feed.maybe_changed()  # the first look only remembers
        event.listen(engine.sync_engine, "before_cursor_execute", count)
        started = time.perf_counter()
        assert not any(feed.maybe_changed() for _ in range(10_000))
        per_call = (time.perf_counter() - started) / 10_000
        assert queries == 0
        assert per_call < 50e-6, per_call  # microseconds, not a round trip
        await SqlUserStore(other_node).add_user("carol", "$argon2id$c")
        if feed.can_listen:
            await asyncio.wait_for(heard.wait(), 2.0)
        assert feed.maybe_changed()
        assert not feed.maybe_changed()
        assert queries == 0
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)
        await feed.close()
        await other_node.dispose()
