"""`socksauth db upgrade|current` on SQLite and PostgreSQL, and how every command treats a bad
or unreachable database URL: one line, the right exit code, never the URL's password."""

from __future__ import annotations

import pytest
from cli_runner import cli, cli_process, one_error_line
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.store import migrate

SECRET = "SuperSecret123"
# Nothing listens on port 1: the connection is refused at once, and only on loopback.
UNREACHABLE_URL = f"postgresql+asyncpg://u:{SECRET}@127.0.0.1:1/x"


async def test_db_current_on_an_empty_database_says_to_upgrade(
    database_url: str, unmigrated_engine: AsyncEngine
) -> None:
    result = await cli("db", "current", "--database-url", database_url)
    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"none (not migrated; head is {migrate.head()}): run `socksauth db upgrade`\n"
    )


async def test_db_upgrade_migrates_to_head_and_current_then_says_head(
    database_url: str, unmigrated_engine: AsyncEngine
) -> None:
    result = await cli("db", "upgrade", "--database-url", database_url)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"database schema is at {migrate.head()} (head)\n"
    assert await migrate.current(unmigrated_engine) == migrate.head()

    result = await cli("db", "current", "--database-url", database_url)
    assert (result.exit_code, result.stdout) == (0, f"{migrate.head()} (head)\n")


async def test_db_upgrade_twice_is_harmless(database_url: str, engine: AsyncEngine) -> None:
    result = await cli("db", "upgrade", "--database-url", database_url)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"database schema is at {migrate.head()} (head)\n"


async def test_the_database_url_may_come_from_the_environment(
    database_url: str, engine: AsyncEngine
) -> None:
    result = await cli_process("db", "current", env={"SOCKSAUTH_DATABASE_URL": database_url})
    assert (result.returncode, result.stdout) == (0, f"{migrate.head()} (head)\n"), result.stderr


@pytest.mark.parametrize(
    ("url", "message"),
    [
        pytest.param(
            f"mysql://u:{SECRET}@127.0.0.1:1/x", "scheme 'mysql' is not supported", id="mysql"
        ),
        pytest.param(
            f"postgresql://u:{SECRET}@127.0.0.1:1/x",
            "scheme 'postgresql' is not supported",
            id="postgresql-without-driver",
        ),
        pytest.param(f"{SECRET}-not-a-url", "is not a URL", id="not-a-url"),
        pytest.param(
            f"postgresql+asyncpg://u:{SECRET}@127.0.0.1:notaport/x", "is not a URL", id="bad-port"
        ),
    ],
)
@pytest.mark.parametrize(
    "command", [("db", "current"), ("db", "upgrade"), ("user", "list")], ids=" ".join
)
async def test_an_invalid_database_url_exits_2_with_one_line_without_its_password(
    url: str, message: str, command: tuple[str, ...]
) -> None:
    result = await cli(*command, "--database-url", url)
    assert result.exit_code == 2
    line = one_error_line(result.stderr)
    assert message in line
    assert SECRET not in result.output


@pytest.mark.parametrize(
    "command",
    [
        ("db", "current"),
        ("db", "upgrade"),
        ("user", "list"),
        ("user", "add", "carol", "--password-stdin"),
        ("user", "passwd", "carol", "--password-stdin"),
        ("user", "disable", "carol"),
        ("user", "delete", "carol", "--yes"),
    ],
    ids=" ".join,
)
async def test_an_unreachable_database_exits_1_with_one_line_without_its_password(
    command: tuple[str, ...],
) -> None:
    result = await cli(*command, "--database-url", UNREACHABLE_URL, input="pw\n")
    assert result.exit_code == 1
    assert "Connection refused" in one_error_line(result.stderr)
    assert SECRET not in result.output


async def test_an_unreachable_database_from_the_environment_is_not_printed_either() -> None:
    result = await cli_process("user", "list", env={"SOCKSAUTH_DATABASE_URL": UNREACHABLE_URL})
    assert result.returncode == 1
    one_error_line(result.stderr)
    assert SECRET not in result.stdout + result.stderr
