"""Alembic driven from code: where the migrations are, upgrade, current and head revisions."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.errors import DatabaseError, SchemaOutOfDate
from socksauth.store.database import database_errors

_PACKAGE_DIR = Path(__file__).resolve().parent.parent


def script_location() -> Path:
    """The migrations: the wheel's ``socksauth/_migrations``, else the checkout's ``migrations``."""
    packaged = _PACKAGE_DIR / "_migrations"
    if packaged.is_dir():
        return packaged
    return _PACKAGE_DIR.parent / "migrations"


def alembic_config(connection: Connection | None = None) -> Config:
    """An alembic Config built in code, so no ini file is needed where socksauth is installed.

    ``connection`` is handed to ``migrations/env.py``, which then migrates on it.
    """
    config = Config()
    # Config values go through configparser interpolation, where "%" is special.
    config.set_main_option("script_location", str(script_location()).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def head() -> str:
    """The revision this socksauth's code needs (the single head of the migrations)."""
    revision = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if revision is None:
        raise RuntimeError(f"no migrations found in {script_location()}")
    return revision


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Migrate the database behind ``engine`` up to ``revision``, in one transaction."""

    def run(connection: Connection) -> None:
        command.upgrade(alembic_config(connection), revision)

    async with engine.begin() as conn:
        await conn.run_sync(run)


async def current(engine: AsyncEngine) -> str | None:
    """The database's revision, or None for a database never migrated."""

    def read(connection: Connection) -> str | None:
        return MigrationContext.configure(connection).get_current_revision()

    async with engine.connect() as conn:
        return await conn.run_sync(read)


async def ensure_current(engine: AsyncEngine) -> None:
    """Refuse to run against a schema other than the one this code was written for.

    Raises:
        SchemaOutOfDate: the database is behind (or ahead of) this socksauth's head revision.
    """
    found = await current(engine)
    needed = head()
    if found == needed:
        return
    script = ScriptDirectory.from_config(alembic_config())
    known = {rev.revision for rev in script.walk_revisions()}
    if found is not None and found not in known:
        raise SchemaOutOfDate(
            f"database schema is at {found}, which this socksauth does not know "
            f"(it needs {needed}): the database was migrated by a newer socksauth"
        )
    raise SchemaOutOfDate(
        f"database schema is at {found or 'nothing (never migrated)'}, "
        f"this socksauth needs {needed}: run `socksauth db upgrade`"
    )


async def readiness_problem(engine: AsyncEngine, needed: str, timeout_seconds: float) -> str | None:
    """Why the database cannot serve this socksauth now (unreachable, no answer within
    ``timeout_seconds``, schema not at ``needed``), or None when it can. Reading the schema's
    revision is the query that proves the database answers."""
    try:
        async with asyncio.timeout(timeout_seconds):
            with database_errors():
                found = await current(engine)
    except TimeoutError:
        return f"database: no answer within {timeout_seconds:g} s"
    except DatabaseError as error:
        return str(error)
    if found != needed:
        return f"database schema is at {found or 'nothing'}, this socksauth needs {needed}"
    return None
