"""`socksauth admin`: credentials for the dashboard (tokens, accounts marked admin)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import click

from socksauth import app
from socksauth.cli.audit import _time
from socksauth.cli.options import database_url_option, resolve_database_url, run_command


@click.group()
def admin() -> None:
    """Who may open the dashboard on the admin listener (`/`).

    A token (`admin token create`) is sent as `Authorization: Bearer TOKEN`; an account
    marked admin (`admin grant NAME`) logs in with HTTP Basic and its proxy password.
    """


@admin.group()
def token() -> None:
    """Dashboard tokens: stored as SHA-256, shown once at creation."""


@token.command("create")
@click.argument("name")
@database_url_option
def create_token(name: str, database_url: str | None) -> None:
    """Create a token called NAME and print it (only now: only its hash is kept)."""
    url = resolve_database_url(database_url)
    secret, digest = app.new_admin_token()

    async def store() -> None:
        async with app.open_admin_credentials(url) as credentials:
            await credentials.add_token(name, digest)

    run_command(store())
    click.echo(secret)


@token.command("list")
@database_url_option
def list_tokens(database_url: str | None) -> None:
    """Names and creation times of the tokens (never the tokens)."""
    url = resolve_database_url(database_url)

    async def names() -> Sequence[tuple[str, datetime]]:
        async with app.open_admin_credentials(url) as credentials:
            return await credentials.token_names()

    for name, created in run_command(names()):
        click.echo(f"{name}  {_time(created)}")


@token.command("revoke")
@click.argument("name")
@database_url_option
def revoke_token(name: str, database_url: str | None) -> None:
    """Delete the token called NAME: it opens nothing from now on."""
    url = resolve_database_url(database_url)

    async def revoke() -> None:
        async with app.open_admin_credentials(url) as credentials:
            await credentials.delete_token(name)

    run_command(revoke())
    click.echo(f"token {name!r} revoked")


@admin.command()
@click.argument("username", metavar="NAME")
@database_url_option
def grant(username: str, database_url: str | None) -> None:
    """Mark the account NAME as admin: it may open the dashboard with HTTP Basic."""
    _set_admin(username, True, database_url)
    click.echo(f"{username!r} may open the dashboard")


@admin.command()
@click.argument("username", metavar="NAME")
@database_url_option
def withdraw(username: str, database_url: str | None) -> None:
    """Unmark the account NAME as admin (its proxy access stays)."""
    _set_admin(username, False, database_url)
    click.echo(f"{username!r} may no longer open the dashboard")


def _set_admin(username: str, admin: bool, database_url: str | None) -> None:
    url = resolve_database_url(database_url)

    async def change() -> None:
        async with app.open_admin_credentials(url) as credentials:
            await credentials.set_admin(username, admin)

    run_command(change())
