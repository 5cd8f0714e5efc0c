"""Alembic environment: runs migrations on a handed-over connection or the configured database."""

from __future__ import annotations

import asyncio
import os
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from socksauth.store.database import create_engine, default_sqlite_url
from socksauth.store.models import Base

URL_ENVIRONMENT_VARIABLE = "SOCKSAUTH_DATABASE_URL"

config = context.config
# Autogenerate compares the database against the models; revision files never import them.
target_metadata = Base.metadata

# Only the alembic CLI has an ini file; socksauth itself configures logging in logs.py.
if config.config_file_name is not None:
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    """The URL from the alembic config, else $SOCKSAUTH_DATABASE_URL, else the default file."""
    return (
        config.get_main_option("sqlalchemy.url")
        or os.environ.get(URL_ENVIRONMENT_VARIABLE)
        or default_sqlite_url()
    )


def run_migrations(connection: Connection) -> None:
    """Run the migrations on a synchronous connection (inside ``run_sync`` when async)."""
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_migrations_on_new_engine(url: str) -> None:
    """Open the async engine for ``url``, migrate through ``run_sync``, dispose."""
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_migrations)
    finally:
        await engine.dispose()


def run_migrations_offline(url: str) -> None:
    """Emit the SQL instead of running it (``alembic upgrade head --sql``)."""
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=url.startswith("sqlite"),
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline(database_url())
elif (handed_over := config.attributes.get("connection")) is not None:
    run_migrations(handed_over)
else:
    asyncio.run(run_migrations_on_new_engine(database_url()))
