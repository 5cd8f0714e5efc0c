"""`socksauth user …` on SQLite and PostgreSQL, checked against the store and a running proxy."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from cli_runner import cli, one_error_line
from e2e import (
    ALICE,
    ALICE_PASSWORD,
    BOB,
    BOB_PASSWORD,
    WAIT_SECONDS,
    RunningProxy,
    login,
    raw_connection,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.auth import passwords
from socksauth.server.quota import hour_start, resets_at
from socksauth.store.usage import SqlTrafficUsage
from socksauth.store.users import SqlUserStore

CAROL = "carol"


@pytest.fixture
def store(engine: AsyncEngine) -> SqlUserStore:
    return SqlUserStore(engine)


async def password_works(store: SqlUserStore, username: str, password: str) -> bool:
    user = await store.get_user(username)
    return user is not None and passwords.verify_password(password, user.password_hash)


async def can_log_in(proxy_port: int, username: str, password: str) -> bool:
    async with raw_connection(proxy_port) as (reader, writer):
        writer.write(b"\x05\x01\x02")
        assert await reader.readexactly(2) == b"\x05\x02"
        name, secret = username.encode(), password.encode()
        writer.write(bytes((1, len(name))) + name + bytes((len(secret),)) + secret)
        return await reader.readexactly(2) == b"\x01\x00"


# --- add ----------------------------------------------------------------------------------------


async def test_user_add_reads_the_password_from_stdin(
    database_url: str, store: SqlUserStore
) -> None:
    result = await cli("user", "add", CAROL, "--password-stdin", "--database-url", database_url,
                       input="carols password\n")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == f"user {CAROL} added\n"
    assert await password_works(store, CAROL, "carols password")
    assert "carols password" not in result.output


async def test_user_add_generate_prints_a_password_that_logs_in_through_the_proxy(
    database_url: str, proxy: RunningProxy
) -> None:
    result = await cli("user", "add", CAROL, "--generate", "--database-url", database_url)
    assert result.exit_code == 0, result.output
    match = re.fullmatch(rf"user {CAROL} added\npassword: (\S+)\n", result.stdout)
    assert match, result.stdout
    password = match.group(1)
    assert len(password) >= 16
    assert await can_log_in(proxy.port, CAROL, password)
    assert not await can_log_in(proxy.port, CAROL, password + "x")


async def test_user_add_prompts_twice_for_the_password(
    database_url: str, store: SqlUserStore
) -> None:
    result = await cli("user", "add", CAROL, "--database-url", database_url, input="pw\npw\n")
    assert result.exit_code == 0, result.output
    assert "Password: " in result.output and "Repeat for confirmation: " in result.output
    assert await password_works(store, CAROL, "pw")


async def test_user_add_with_mismatched_prompts_creates_no_user(
    database_url: str, store: SqlUserStore
) -> None:
    result = await cli("user", "add", CAROL, "--database-url", database_url,
                       input="first\nsecond\n")  # fmt: skip
    assert result.exit_code != 0
    assert "do not match" in result.output
    assert await store.get_user(CAROL) is None


async def test_user_add_of_a_taken_name_exits_2_with_one_line(
    database_url: str, user_store: SqlUserStore
) -> None:
    result = await cli("user", "add", ALICE, "--password-stdin", "--database-url", database_url,
                       input="another\n")  # fmt: skip
    assert result.exit_code == 2
    assert "already exists" in one_error_line(result.stderr)
    assert result.stdout == ""
    assert await password_works(user_store, ALICE, ALICE_PASSWORD)


async def test_user_add_with_an_invalid_name_exits_2_with_one_line(
    database_url: str, store: SqlUserStore
) -> None:
    result = await cli("user", "add", " carol", "--password-stdin", "--database-url", database_url,
                       input="pw\n")  # fmt: skip
    assert result.exit_code == 2
    assert "whitespace" in one_error_line(result.stderr)


async def test_password_stdin_and_generate_exclude_each_other(
    database_url: str, store: SqlUserStore
) -> None:
    result = await cli("user", "add", CAROL, "--password-stdin", "--generate",
                       "--database-url", database_url, input="pw\n")  # fmt: skip
    assert result.exit_code == 2
    assert "exclude each other" in result.stderr
    assert await store.get_user(CAROL) is None


# --- list ---------------------------------------------------------------------------------------


def table(output: str) -> list[list[str]]:
    """Rows of `user list`, cells split on runs of two or more spaces."""
    return [re.split(r"\s{2,}", line.strip()) for line in output.strip().splitlines()]


async def test_user_list_shows_columns_and_never_before_a_login(
    database_url: str, user_store: SqlUserStore
) -> None:
    result = await cli("user", "list", "--database-url", database_url)
    assert result.exit_code == 0, result.output
    rows = table(result.stdout)
    assert rows[0] == [
        "USER", "ENABLED", "CREATED", "LAST LOGIN", "MAX CONN", "MAX BANDWIDTH", "EXPIRES",
        "QUOTA USED", "RESETS",
    ]  # fmt: skip
    assert [row[0] for row in rows[1:]] == [ALICE, BOB]
    for row in rows[1:]:
        assert row[1] == "yes"
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", row[2]), row
        assert row[3:] == ["never", "-", "-", "-", "-", "-"]


async def test_user_list_shows_the_limits_set_with_user_set(
    database_url: str, user_store: SqlUserStore
) -> None:
    result = await cli(
        "user", "set", ALICE, "--max-connections", "5", "--max-bandwidth", "10MiB/s",
        "--expires", "2027-01-31", "--database-url", database_url,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    rows = {row[0]: row for row in table((await cli("user", "list", "--database-url",
                                                    database_url)).stdout)}  # fmt: skip
    assert rows[ALICE][4:] == ["5", "10MiB/s", "2027-01-31 00:00:00Z", "-", "-"]
    assert rows[BOB][4:] == ["-", "-", "-", "-", "-"]


async def test_user_set_quota_is_shown_with_every_nodes_use_by_list_and_stats(
    database_url: str, user_store: SqlUserStore, engine: AsyncEngine
) -> None:
    result = await cli("user", "set", ALICE, "--quota", "10GiB/month", "--database-url",
                       database_url)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"quota {10 * 1024**3} B/month" in result.stdout
    assert (await cli("user", "set", BOB, "--quota", "1GB/30d", "--database-url",
                      database_url)).exit_code == 0  # fmt: skip
    now = datetime.now(UTC)
    usage = SqlTrafficUsage(engine)
    await usage.add("node-a", hour_start(now), {ALICE: 1024**3})
    await usage.add("node-b", hour_start(now), {ALICE: 1024**3 // 2})
    rows = {row[0]: row for row in table((await cli("user", "list", "--database-url",
                                                    database_url)).stdout)}  # fmt: skip
    assert rows[ALICE][7] == "1.50GiB of 10GiB/month"
    month = resets_at("month", now)
    assert month is not None and rows[ALICE][8] == month.strftime("%Y-%m-%d %H:%M:%SZ")
    assert rows[BOB][7:] == ["0B of 1GB/30d", "rolling"]
    # A quota time zone from the environment moves the reset.
    zoned = await cli("user", "list", "--database-url", database_url,
                      env={"SOCKSAUTH_QUOTA_TIME_ZONE": "Pacific/Auckland"})  # fmt: skip
    month_there = resets_at("month", now, ZoneInfo("Pacific/Auckland"))
    assert month_there is not None
    assert month_there.strftime("%Y-%m-%d %H:%M:%SZ") in zoned.stdout
    cleared = await cli("user", "set", BOB, "--quota", "none", "--database-url", database_url)
    assert cleared.exit_code == 0 and "quota none" in cleared.stdout


@pytest.mark.parametrize("quota", ["10GiB", "10GiB/year", "lots/day"])
async def test_user_set_with_a_malformed_quota_exits_2_naming_the_option(
    database_url: str, user_store: SqlUserStore, quota: str
) -> None:
    result = await cli("user", "set", ALICE, "--quota", quota, "--database-url", database_url)
    assert result.exit_code == 2
    # click's usage error: the usage line, then one "Error:" line naming the option.
    assert result.output.strip().splitlines()[-1].startswith("Error: Invalid value for --quota")


async def test_user_list_shows_the_last_login_after_a_proxied_login(
    database_url: str, proxy: RunningProxy
) -> None:
    async with raw_connection(proxy.port) as (reader, writer):
        await login(reader, writer, ALICE, ALICE_PASSWORD)

    async def alice_login_recorded() -> bool:
        user = await proxy.store.get_user(ALICE)
        return user is not None and user.last_login_at is not None

    # Last-login times are written in batches, once a second: poll the store, bounded.
    deadline = time.monotonic() + WAIT_SECONDS
    while not await alice_login_recorded():
        assert time.monotonic() < deadline, "alice's login was not recorded in time"
        await asyncio.sleep(0.05)

    rows = {row[0]: row for row in table((await cli("user", "list", "--database-url",
                                                    database_url)).stdout)}  # fmt: skip
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\dZ", rows[ALICE][3]), rows[ALICE]
    assert rows[BOB][3] == "never"


# --- passwd, disable, enable, delete ------------------------------------------------------------


async def test_user_passwd_changes_the_password_used_by_the_running_proxy(
    database_url: str, proxy: RunningProxy
) -> None:
    result = await cli("user", "passwd", ALICE, "--password-stdin", "--database-url", database_url,
                       input="brand new\n")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.stdout == f"password of {ALICE} changed\n"
    assert await can_log_in(proxy.port, ALICE, "brand new")
    assert not await can_log_in(proxy.port, ALICE, ALICE_PASSWORD)


async def test_user_passwd_of_an_unknown_user_exits_2_with_one_line(
    database_url: str, store: SqlUserStore
) -> None:
    result = await cli("user", "passwd", "nobody", "--password-stdin",
                       "--database-url", database_url, input="pw\n")  # fmt: skip
    assert result.exit_code == 2
    assert one_error_line(result.stderr) == "Error: no user named 'nobody'"


async def test_user_disable_and_enable_take_effect_on_the_running_proxy(
    database_url: str, proxy: RunningProxy
) -> None:
    result = await cli("user", "disable", BOB, "--database-url", database_url)
    assert (result.exit_code, result.stdout) == (0, f"user {BOB} disabled\n")
    assert not await can_log_in(proxy.port, BOB, BOB_PASSWORD)
    listed = {row[0]: row for row in table((await cli("user", "list", "--database-url",
                                                      database_url)).stdout)}  # fmt: skip
    assert listed[BOB][1] == "no"

    result = await cli("user", "enable", BOB, "--database-url", database_url)
    assert (result.exit_code, result.stdout) == (0, f"user {BOB} enabled\n")
    # The proxy cached bob's disabled account at the refused login: the change reaches it
    # through the store's change feed.
    assert await proxy.caught_up() < 2.0
    assert await can_log_in(proxy.port, BOB, BOB_PASSWORD)


@pytest.mark.parametrize("command", ["disable", "enable", "delete"])
async def test_account_commands_on_an_unknown_user_exit_2_with_one_line(
    database_url: str, store: SqlUserStore, command: str
) -> None:
    confirm = ["--yes"] if command == "delete" else []
    result = await cli("user", command, "nobody", *confirm, "--database-url", database_url)
    assert result.exit_code == 2
    assert "no user named 'nobody'" in one_error_line(result.stderr)


async def test_user_delete_asks_and_no_keeps_the_user(
    database_url: str, user_store: SqlUserStore
) -> None:
    result = await cli("user", "delete", BOB, "--database-url", database_url, input="n\n")
    assert result.exit_code == 1
    assert f"Delete user {BOB}?" in result.output
    assert "Aborted" in result.output
    assert await user_store.get_user(BOB) is not None


async def test_user_delete_asks_and_yes_deletes(
    database_url: str, user_store: SqlUserStore
) -> None:
    result = await cli("user", "delete", BOB, "--database-url", database_url, input="y\n")
    assert result.exit_code == 0, result.output
    assert await user_store.get_user(BOB) is None


async def test_user_delete_with_yes_does_not_ask(
    database_url: str, user_store: SqlUserStore, proxy: RunningProxy
) -> None:
    result = await cli("user", "delete", BOB, "--yes", "--database-url", database_url)
    assert (result.exit_code, result.stdout) == (0, f"user {BOB} deleted\n")
    assert await user_store.get_user(BOB) is None
    assert not await can_log_in(proxy.port, BOB, BOB_PASSWORD)


async def test_user_commands_refuse_an_unmigrated_database(
    database_url: str, unmigrated_engine: AsyncEngine
) -> None:
    result = await cli("user", "list", "--database-url", database_url)
    assert result.exit_code == 1
    assert "socksauth db upgrade" in one_error_line(result.stderr)


async def test_user_set_client_networks_are_stored_normalised_and_cleared_with_any(
    database_url: str, user_store: SqlUserStore
) -> None:
    result = await cli("user", "set", ALICE, "--client-network", "10.1.2.3/16", "--client-network",
                       "2001:db8::/32", "--database-url", database_url)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "client networks 10.1.0.0/16 2001:db8::/32" in result.stdout
    alice = await user_store.get_user(ALICE)
    assert alice is not None and alice.client_networks == ("10.1.0.0/16", "2001:db8::/32")
    bad = await cli("user", "set", ALICE, "--client-network", "10.1.0.0/33",
                    "--database-url", database_url)  # fmt: skip
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines()[-1].startswith(
        "Error: Invalid value for --client-network"
    )
    cleared = await cli("user", "set", ALICE, "--client-network", "any", "--database-url",
                        database_url)  # fmt: skip
    assert cleared.exit_code == 0 and "client networks any" in cleared.stdout
    alice = await user_store.get_user(ALICE)
    assert alice is not None and alice.client_networks == ()


async def test_user_set_egress_takes_addresses_and_pools_and_none_clears(
    database_url: str, user_store: SqlUserStore
) -> None:
    result = await cli("user", "set", ALICE, "--egress", "127.0.0.2", "--egress", "pool:crawl",
                       "--database-url", database_url)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "egress 127.0.0.2 pool:crawl" in result.stdout
    alice = await user_store.get_user(ALICE)
    assert alice is not None and alice.egress == ("127.0.0.2", "pool:crawl")
    bad = await cli("user", "set", ALICE, "--egress", "eth0", "--database-url", database_url)
    assert bad.exit_code == 2
    assert bad.output.strip().splitlines()[-1].startswith("Error: Invalid value for --egress")
    cleared = await cli("user", "set", ALICE, "--egress", "none", "--database-url", database_url)
    assert cleared.exit_code == 0 and "egress any" in cleared.stdout
