"""Alembic migrations from code: upgrade, current, head, the schema check, models agree."""

from __future__ import annotations

import ast
import re
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.errors import SchemaOutOfDate
from socksauth.store import migrate
from socksauth.store.models import Base

VERSIONS = migrate.script_location() / "versions"


async def test_a_new_database_has_no_revision(unmigrated_engine: AsyncEngine) -> None:
    assert await migrate.current(unmigrated_engine) is None


async def test_upgrade_brings_the_database_to_head(unmigrated_engine: AsyncEngine) -> None:
    await migrate.upgrade(unmigrated_engine)
    assert await migrate.current(unmigrated_engine) == migrate.head()


async def test_upgrade_twice_is_harmless(engine: AsyncEngine) -> None:
    await migrate.upgrade(engine)
    assert await migrate.current(engine) == migrate.head()


async def test_upgrade_creates_the_users_table(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        tables = await conn.run_sync(lambda sync: inspect(sync).get_table_names())
    assert "users" in tables


async def test_downgrade_to_base_and_up_again(engine: AsyncEngine) -> None:
    def downgrade(connection: Connection) -> None:
        command.downgrade(migrate.alembic_config(connection), "base")

    async with engine.begin() as conn:
        await conn.run_sync(downgrade)
    assert await migrate.current(engine) is None
    await migrate.upgrade(engine)
    assert await migrate.current(engine) == migrate.head()


async def test_migrations_and_models_agree(engine: AsyncEngine) -> None:
    def differences(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, Base.metadata))

    async with engine.connect() as conn:
        assert await conn.run_sync(differences) == []


async def test_ensure_current_accepts_a_database_at_head(engine: AsyncEngine) -> None:
    await migrate.ensure_current(engine)


async def test_ensure_current_refuses_an_unmigrated_database(
    unmigrated_engine: AsyncEngine,
) -> None:
    with pytest.raises(SchemaOutOfDate, match=r"run `socksauth db upgrade`") as caught:
        await migrate.ensure_current(unmigrated_engine)
    assert migrate.head() in str(caught.value)


async def test_ensure_current_refuses_a_revision_from_a_newer_socksauth(
    engine: AsyncEngine,
) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'f00dcafe'"))
    with pytest.raises(SchemaOutOfDate, match=r"f00dcafe.*newer socksauth"):
        await migrate.ensure_current(engine)


def test_head_is_a_known_revision() -> None:
    assert migrate.head() == "0007"


def test_script_location_is_the_checkout_in_an_editable_install() -> None:
    location = migrate.script_location()
    assert (location / "env.py").is_file()
    assert location.name in {"migrations", "_migrations"}


def test_revision_file_names_start_with_their_date() -> None:
    names = sorted(path.name for path in VERSIONS.glob("*.py"))
    assert names
    for name in names:
        assert re.fullmatch(r"\d{8}_[0-9a-z]+_\w+\.py", name), name


ALLOWED_REVISION_IMPORTS = {"__future__", "collections.abc", "typing", "alembic", "sqlalchemy"}


@pytest.mark.parametrize("path", sorted(VERSIONS.glob("*.py")), ids=lambda path: path.name)
def test_revision_files_use_only_op_and_sa(path: Any) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            assert node.module is not None
            imported.add(node.module)
    assert imported <= ALLOWED_REVISION_IMPORTS, imported - ALLOWED_REVISION_IMPORTS
