"""SqlRuleStore and the user limit columns, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.errors import UserError
from socksauth.store.interfaces import NewRule
from socksauth.store.rules import SqlRuleStore
from socksauth.store.users import SqlUserStore


async def test_rules_come_back_in_position_order(engine: AsyncEngine) -> None:
    store = SqlRuleStore(engine)
    first = await store.add_rule(NewRule(action="deny", cidr="10.0.0.0/8"))
    last = await store.add_rule(NewRule(action="deny"))
    inserted = await store.add_rule(
        NewRule(
            action="allow",
            username="ops",
            cidr="10.0.0.0/8",
            domain="*.corp.example",
            port_min=22,
            port_max=22,
            command="connect",
        ),
        position=1,
    )
    rules = await store.list_rules()
    assert [rule.id for rule in rules] == [inserted.id, first.id, last.id]
    assert [rule.position for rule in rules] == [1, 2, 3]
    assert rules[0] == inserted
    assert rules[0].created_at.tzinfo is not None


async def test_deleting_a_rule(engine: AsyncEngine) -> None:
    store = SqlRuleStore(engine)
    rule = await store.add_rule(NewRule(action="deny"))
    await store.delete_rule(rule.id)
    assert await store.list_rules() == []
    with pytest.raises(UserError, match="no rule"):
        await store.delete_rule(rule.id)


async def test_user_limits_are_stored_and_read_back(engine: AsyncEngine) -> None:
    users = SqlUserStore(engine)
    await users.add_user("alice", "$argon2id$x")
    await users.add_user("bob", "$argon2id$y")
    expires = datetime(2027, 1, 31, tzinfo=UTC)
    await users.set_limits(
        "alice", max_connections=3, max_bandwidth_bytes_per_second=10 << 20, expires_at=expires
    )
    alice = await users.get_user("alice")
    assert alice is not None
    assert (alice.max_connections, alice.max_bandwidth_bytes_per_second, alice.expires_at) == (
        3,
        10 << 20,
        expires,
    )
    assert alice.expired(datetime(2027, 2, 1, tzinfo=UTC))
    assert not alice.expired(datetime(2027, 1, 30, tzinfo=UTC))
    live = await users.get_users(["alice", "bob", "nobody"])
    assert sorted(live) == ["alice", "bob"]
    assert live["bob"].max_connections is None
    with pytest.raises(UserError):
        await users.set_limits(
            "nobody", max_connections=None, max_bandwidth_bytes_per_second=None, expires_at=None
        )
