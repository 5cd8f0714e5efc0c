"""`socksauth db upgrade|current`: schema migrations, no alembic.ini needed."""

from __future__ import annotations

import click

from socksauth import app
from socksauth.cli.options import database_url_option, resolve_database_url, run_command


@click.group()
def db() -> None:
    """Database schema."""


@db.command()
@database_url_option
def upgrade(database_url: str | None) -> None:
    """Migrate the database to the schema this version needs."""
    revision = run_command(app.upgrade_database(resolve_database_url(database_url)))
    click.echo(f"database schema is at {revision} (head)")


@db.command()
@database_url_option
def current(database_url: str | None) -> None:
    """Print the database's schema revision and whether it is current."""
    revision, head = run_command(app.database_revision(resolve_database_url(database_url)))
    if revision is None:
        click.echo(f"none (not migrated; head is {head}): run `socksauth db upgrade`")
    elif revision == head:
        click.echo(f"{revision} (head)")
    else:
        click.echo(f"{revision} (head is {head}): run `socksauth db upgrade`")
