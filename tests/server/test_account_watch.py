"""Access without sockets: stored rules become policy rules, why a connection is revoked,
bandwidth buckets shared per user, and the watch loop ending revoked users' connections."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime, timedelta

import pytest

from socksauth.config import Settings
from socksauth.rules import Action
from socksauth.server.access import Access, Bandwidth, policy_rules, revoked, watch
from socksauth.store.interfaces import RuleRecord, UserRecord

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
ALICE = UserRecord(
    username="alice",
    password_hash="$argon2id$one",
    enabled=True,
    created_at=NOW,
    updated_at=NOW,
    last_login_at=None,
)


def rule(rule_id: int, **values: object) -> RuleRecord:
    fields: dict[str, object] = {"action": "deny", "id": rule_id, "position": rule_id}
    fields.update(values)
    return RuleRecord(created_at=NOW, **fields)  # type: ignore[arg-type]


def test_stored_rules_become_policy_rules_and_bad_rows_are_skipped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    rules = policy_rules(
        [
            rule(1, action="allow", cidr="10.0.0.0/8", port_min=22, port_max=22, command="connect"),
            rule(2, cidr="not-a-network"),
            rule(3, command="teleport"),
            rule(4, domain="*.Example.com"),
        ]
    )
    assert [(r.action, str(r.network), r.domain) for r in rules] == [
        (Action.ALLOW, "10.0.0.0/8", None),
        (Action.DENY, "None", "*.example.com"),
    ]
    assert "rule 2 ignored" in caplog.text and "rule 3 ignored" in caplog.text


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        (None, "account deleted"),
        (dataclasses.replace(ALICE, enabled=False), "account disabled"),
        (dataclasses.replace(ALICE, expires_at=NOW), "account expired"),
        (dataclasses.replace(ALICE, password_hash="$argon2id$two"), "password changed"),
        (dataclasses.replace(ALICE, expires_at=NOW + timedelta(days=1)), None),
        (dataclasses.replace(ALICE, max_connections=1, last_login_at=NOW), None),
    ],
)
def test_why_a_connection_is_revoked(stored: UserRecord | None, reason: str | None) -> None:
    assert revoked(ALICE, stored, NOW) == reason


def test_bandwidth_buckets_are_shared_per_user_and_follow_rate_changes() -> None:
    bandwidth = Bandwidth()
    assert bandwidth.buckets(ALICE) is None
    assert bandwidth.buckets(None) is None
    limited = dataclasses.replace(ALICE, max_bandwidth_bytes_per_second=1000)
    first = bandwidth.buckets(limited)
    assert first is not None
    assert bandwidth.buckets(limited) == first
    faster = bandwidth.buckets(dataclasses.replace(limited, max_bandwidth_bytes_per_second=2000))
    assert faster is not None and faster[0].rate_bytes_per_second == 2000
    bandwidth.forget([])
    assert bandwidth.buckets(limited) != first


class Store:
    def __init__(self) -> None:
        self.users: dict[str, UserRecord] = {"alice": ALICE}
        self.rules: list[RuleRecord] = []
        self.fail = False

    async def get_users(self, usernames: Collection[str]) -> Mapping[str, UserRecord]:
        if self.fail:
            raise OSError("database away")
        return {name: self.users[name] for name in usernames if name in self.users}

    async def list_rules(self) -> Sequence[RuleRecord]:
        if self.fail:
            raise OSError("database away")
        return self.rules


async def test_the_watch_reloads_rules_and_ends_revoked_connections(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="socksauth")
    store = Store()
    access = Access(Settings(database_url="sqlite+aiosqlite://"), rules=store, users=store)
    ended: list[str] = []
    task = asyncio.create_task(
        watch(access, lambda: [(ALICE, ended.append)], 0.01, clock=lambda: NOW)
    )
    try:
        store.rules = [rule(1, cidr="192.0.2.0/24")]
        while not access.policy.rules:
            await asyncio.sleep(0.01)
        store.fail = True  # a database outage changes nothing, and is logged once
        while "re-reading rules and accounts failed" not in caplog.text:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)  # 30 rounds' worth of the 0.01 s interval: backed off instead
        assert ended == [] and len(access.policy.rules) == 1
        assert caplog.text.count("re-reading rules and accounts failed") == 1
        store.fail = False
        store.users["alice"] = dataclasses.replace(ALICE, enabled=False)
        while not ended:
            await asyncio.sleep(0.01)
        assert ended[0] == "account disabled"
        assert "re-reading rules and accounts works again after" in caplog.text
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
