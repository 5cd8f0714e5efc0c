"""`socksauth rule add|list|delete`, `socksauth user set`, and the serve options for the
policy and limits, in-process on both databases."""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime
from typing import Any

import pytest
from cli_runner import cli

from socksauth.store.rules import SqlRuleStore
from socksauth.store.users import SqlUserStore


async def test_rules_are_added_listed_in_order_and_deleted(
    database_url: str, user_store: SqlUserStore, engine: Any
) -> None:
    url = ["--database-url", database_url]
    result = await cli("rule", "add", "deny", "--cidr", "10.0.0.0/8", *url)
    assert result.exit_code == 0, result.output
    assert "rule 1 added at position 1: deny 10.0.0.0/8" in result.output
    result = await cli(
        "rule", "add", "allow", "--user", "ops", "--cidr", "10.1.0.0/16", "--port", "22",
        "--command", "connect", "--position", "1", *url,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    result = await cli(
        "rule", "add", "ALLOW", "--domain", "*.Example.COM", "--port", "80-443", *url
    )
    assert result.exit_code == 0, result.output
    listed = (await cli("rule", "list", *url)).output.splitlines()
    assert listed[0].split() == [
        "#",
        "ID",
        "ACTION",
        "USER",
        "COMMAND",
        "NETWORK",
        "DOMAIN",
        "PORTS",
    ]
    assert [line.split() for line in listed[1:]] == [
        ["1", "2", "allow", "ops", "connect", "10.1.0.0/16", "*", "22"],
        ["2", "1", "deny", "*", "*", "10.0.0.0/8", "*", "*"],
        ["3", "3", "allow", "*", "*", "*", "*.example.com", "80-443"],
    ]
    assert (await cli("rule", "delete", "1", *url)).exit_code == 0
    assert [rule.id for rule in await SqlRuleStore(engine).list_rules()] == [2, 3]
    missing = await cli("rule", "delete", "1", *url)
    assert missing.exit_code == 2
    assert "no rule with id 1" in missing.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["maybe"], "'maybe' is not one of"),
        (["deny", "--cidr", "10.0.0.300/8"], "is not an IP network"),
        (["deny", "--port", "99999"], "65535"),
        (["deny", "--port", "90-80"], "first <= last"),
        (["deny", "--domain", "a.*.b"], "example.com"),
        (["deny", "--command", "ping"], "'ping' is not one of"),
    ],
)
async def test_bad_rules_are_refused_with_exit_code_2(
    database_url: str, user_store: SqlUserStore, args: list[str], message: str
) -> None:
    result = await cli("rule", "add", *args, "--database-url", database_url)
    assert result.exit_code == 2
    assert message in result.output


async def test_user_set_changes_only_the_limits_given(
    database_url: str, user_store: SqlUserStore
) -> None:
    url = ["--database-url", database_url]
    result = await cli(
        "user", "set", "alice", "--max-connections", "3", "--max-bandwidth", "10MiB/s",
        "--expires", "2027-01-31", *url,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    alice = await user_store.get_user("alice")
    assert alice is not None
    assert alice.max_connections == 3
    assert alice.max_bandwidth_bytes_per_second == 10 * 1024 * 1024
    assert alice.expires_at == datetime(2027, 1, 31, tzinfo=UTC)
    result = await cli("user", "set", "alice", "--max-connections", "none", *url)
    assert result.exit_code == 0, result.output
    alice = await user_store.get_user("alice")
    assert alice is not None
    assert (alice.max_connections, alice.max_bandwidth_bytes_per_second) == (None, 10485760)
    result = await cli("user", "set", "alice", "--expires", "never", *url)
    alice = await user_store.get_user("alice")
    assert alice is not None and alice.expires_at is None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["alice", "--max-bandwidth", "fast"], "10MiB/s"),
        (["alice", "--max-connections", "many"], "not a number"),
        (["alice", "--max-connections", "0"], "at least 1"),
        (["alice", "--expires", "soon"], "2027-01-31"),
        (["nobody", "--max-connections", "1"], "no user named 'nobody'"),
    ],
)
async def test_user_set_refuses_bad_values_with_exit_code_2(
    database_url: str, user_store: SqlUserStore, args: list[str], message: str
) -> None:
    result = await cli("user", "set", *args, "--database-url", database_url)
    assert result.exit_code == 2
    assert message in result.output


async def test_serve_options_reach_the_settings() -> None:
    result = await cli(
        "config", "check", "--database-url", "sqlite+aiosqlite:///x.sqlite3",
        "--listen", "127.0.0.1:1080@10.0.0.0/8,::1",
        "--deny-private-networks",
        "--max-connections", "0",
        "--max-unauthenticated-per-address", "4",
        "--account-check-interval", "0",
        "--idle-timeout", "60",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    settings = tomllib.loads(result.stdout)
    assert settings["deny_private_networks"] is True
    assert settings["max_connections"] == 0  # no cap
    assert settings["max_unauthenticated"] == 1000
    assert settings["max_unauthenticated_per_address"] == 4
    assert settings["account_check_interval"] == 0  # never
    assert settings["idle_timeout"] == 60
    assert settings["listen"] == ["127.0.0.1:1080@10.0.0.0/8,::1/128"]
