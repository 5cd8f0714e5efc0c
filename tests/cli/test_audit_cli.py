"""`socksauth audit`, `audit prune` and `stats` through click's CliRunner, on both databases."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from datetime import UTC, datetime, timedelta

import pytest
from audit_helpers import failed_login, finished, opened
from click.testing import CliRunner, Result
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.cli import main
from socksauth.cli.audit import parse_duration, parse_moment
from socksauth.store.audit import SqlAuditStore
from socksauth.store.interfaces import AuditQuery

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
async def audited(engine: AsyncEngine, database_url: str) -> str:
    """alice: 2 tunnels (one 100 days old), 1 failed login; bob: 1 open tunnel; mallory: 2
    failed logins."""
    await SqlAuditStore(engine).write_batch(
        [
            finished(opened("alice", started_at=NOW - timedelta(hours=2), target_host="a.example"),
                     seconds=10, bytes_from_client=5, bytes_to_client=50),
            finished(opened("alice", started_at=NOW - timedelta(days=100), target_host="old.test"),
                     seconds=1, bytes_from_client=7, bytes_to_client=70),
            failed_login("alice", started_at=NOW - timedelta(minutes=30)),
            opened("bob", started_at=NOW - timedelta(minutes=5), target_host="b.example"),
            failed_login("mallory", started_at=NOW - timedelta(minutes=20)),
            failed_login("mallory", started_at=NOW - timedelta(minutes=10)),
        ]
    )  # fmt: skip
    return database_url


def run(*args: str, input: str | None = None) -> Result:
    # CliRunner runs the command's own event loop: keep it off this test's loop (a thread).
    return CliRunner().invoke(main, list(args), input=input)


async def invoke(*args: str, input: str | None = None) -> Result:
    return await asyncio.to_thread(run, *args, input=input)


async def test_audit_lists_newest_first_as_a_table(audited: str) -> None:
    result = await invoke("audit", "--database-url", audited)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:3] == ["STARTED", "AT", "ENDED"]
    assert len(lines) == 1 + 6
    assert "b.example:443" in lines[1] and "open" in lines[1]
    assert "old.test:443" in lines[-1]


async def test_audit_filters_by_user_period_target_and_outcome(audited: str) -> None:
    async def ids(*filters: str) -> list[str]:
        result = await invoke("audit", "--format", "json", "--database-url", audited, *filters)
        assert result.exit_code == 0, result.output
        return [row["user"] + ":" + (row["target"] or "-") for row in json.loads(result.output)]

    assert await ids("--user", "alice") == ["alice:-", "alice:a.example:443", "alice:old.test:443"]
    assert await ids("--since", "1h") == ["bob:b.example:443", "mallory:-", "mallory:-", "alice:-"]
    assert await ids("--until", "7d") == ["alice:old.test:443"]
    since = (NOW - timedelta(hours=3)).isoformat()
    until = (NOW - timedelta(hours=1)).isoformat()
    assert await ids("--since", since, "--until", until) == ["alice:a.example:443"]
    assert await ids("--target", "example") == ["bob:b.example:443", "alice:a.example:443"]
    assert await ids("--outcome", "auth_failed", "--limit", "2") == ["mallory:-", "mallory:-"]
    assert await ids("--outcome", "open") == ["bob:b.example:443"]


async def test_audit_csv_has_every_column(audited: str) -> None:
    result = await invoke("audit", "--format", "csv", "--user", "bob", "--database-url", audited)
    (row,) = list(csv.DictReader(io.StringIO(result.output)))
    assert row["user"] == "bob" and row["outcome"] == "open" and row["ended_at"] == ""
    assert row["node"] == "node-a" and row["client"] == "127.0.0.1:40000"


async def test_stats_per_user(audited: str) -> None:
    result = await invoke("stats", "--format", "json", "--database-url", audited)
    assert result.exit_code == 0, result.output
    by_user = {row["user"]: row for row in json.loads(result.output)}
    assert by_user["alice"] == {
        "user": "alice",
        "connections": 2,
        "failed_logins": 1,
        "bytes_from_client": 12,
        "bytes_to_client": 120,
        "tunnel_seconds": 11.0,
        "last_seen": by_user["alice"]["last_seen"],
        "quota_used": None,
        "quota_limit": None,
        "quota_resets_at": None,
    }
    assert by_user["bob"]["connections"] == 1 and by_user["bob"]["failed_logins"] == 0
    assert by_user["mallory"]["connections"] == 0 and by_user["mallory"]["failed_logins"] == 2

    recent = await invoke("stats", "--since", "7d", "--format", "csv", "--database-url", audited)
    rows = {row["user"]: row for row in csv.DictReader(io.StringIO(recent.output))}
    assert rows["alice"]["connections"] == "1" and rows["alice"]["bytes_to_client"] == "50"

    table = await invoke("stats", "--database-url", audited)
    assert table.output.splitlines()[0].split()[:3] == ["USER", "CONNECTIONS", "FAILED"]


async def test_prune_asks_and_deletes_only_old_finished_entries(
    audited: str, engine: AsyncEngine
) -> None:
    declined = await invoke("audit", "prune", "--older-than", "90d", "--database-url", audited,
                            input="n\n")  # fmt: skip
    assert declined.exit_code == 1
    assert len(await SqlAuditStore(engine).find_entries(AuditQuery())) == 6

    result = await invoke("audit", "prune", "--older-than", "90d", "--yes",
                          "--database-url", audited)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "1 audit entries deleted" in result.output
    remaining = await SqlAuditStore(engine).find_entries(AuditQuery())
    assert len(remaining) == 5 and all(e.target_host != "old.test" for e in remaining)


@pytest.mark.parametrize(
    "args",
    [
        ["audit", "--since", "yesterday"],
        ["audit", "--until", "5x"],
        ["audit", "--outcome", "exploded"],
        ["audit", "--limit", "0"],
        ["audit", "--format", "xml"],
        ["stats", "--since", "-1h"],
        ["audit", "prune", "--older-than", "2026-01-01"],
        ["audit", "prune"],
    ],
)
def test_bad_values_exit_2_naming_the_option(args: list[str]) -> None:
    result = run(*args)
    assert result.exit_code == 2
    assert "Error:" in result.output


def test_durations_and_times_parse() -> None:
    now = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
    assert parse_duration("90d") == timedelta(days=90)
    assert parse_duration("2w") == timedelta(weeks=2)
    assert parse_moment("1h", now) == now - timedelta(hours=1)
    assert parse_moment("30m", now) == now - timedelta(minutes=30)
    assert parse_moment("2026-11-01", now) == datetime(2026, 11, 1, tzinfo=UTC)
    assert parse_moment("2026-11-01T10:00:00+01:00", now) == datetime(2026, 11, 1, 9, tzinfo=UTC)
    for bad in ("", "1", "h", "1.5h", "1 day", "tomorrow"):
        with pytest.raises(ValueError):
            parse_moment(bad, now)


async def test_audit_and_stats_filter_by_protocol_and_show_it(
    engine: AsyncEngine, database_url: str
) -> None:
    await SqlAuditStore(engine).write_batch(
        [
            finished(opened("alice", started_at=NOW - timedelta(minutes=3), target_host="s.test")),
            finished(opened("alice", started_at=NOW - timedelta(minutes=2), target_host="h.test",
                            protocol="http", requests=4)),
            failed_login("bob", started_at=NOW - timedelta(minutes=1), protocol="http"),
        ]
    )  # fmt: skip
    result = await invoke(
        "audit", "--protocol", "http", "--format", "csv", "--database-url", database_url
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [(row["user"], row["protocol"], row["requests"]) for row in rows] == [
        ("bob", "http", "0"),
        ("alice", "http", "4"),
    ]
    table = await invoke("audit", "--protocol", "socks5", "--database-url", database_url)
    assert "PROTOCOL" in table.output.splitlines()[0] and "s.test" in table.output
    assert "h.test" not in table.output
    stats = await invoke(
        "stats", "--protocol", "http", "--format", "json", "--database-url", database_url
    )
    by_user = {row["user"]: row for row in json.loads(stats.output)}
    assert (by_user["alice"]["connections"], by_user["bob"]["failed_logins"]) == (1, 1)
    both = await invoke("stats", "--format", "json", "--database-url", database_url)
    assert {row["user"]: row for row in json.loads(both.output)}["alice"]["connections"] == 2


def test_an_unknown_protocol_exits_2() -> None:
    result = run("audit", "--protocol", "gopher", "--database-url", "sqlite+aiosqlite:///x")
    assert result.exit_code == 2 and "gopher" in result.output
