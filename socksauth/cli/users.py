"""`socksauth user add|list|passwd|disable|enable|delete`."""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable

import click

from socksauth import app
from socksauth.auth import accounts, passwords
from socksauth.cli.options import database_url_option, resolve_database_url, run_command
from socksauth.store.interfaces import UserStore


@click.group()
def user() -> None:
    """Accounts that may use the proxy."""


def _password_source(function: Callable[..., None]) -> Callable[..., None]:
    function = click.option(
        "--password-stdin", is_flag=True, help="Read the password from the first line of stdin."
    )(function)
    return click.option(
        "--generate", is_flag=True, help="Generate a strong random password and print it."
    )(function)


def _obtain_password(password_stdin: bool, generate: bool) -> tuple[str, bool]:
    """The new password and whether it was generated (and so must be shown once)."""
    if password_stdin and generate:
        raise click.UsageError("--password-stdin and --generate exclude each other")
    if generate:
        return passwords.generate_password(), True
    if password_stdin:
        line = sys.stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
        if not password:
            raise click.UsageError("no password on standard input")
        return password, False
    return click.prompt("Password", hide_input=True, confirmation_prompt=True), False


async def _with_store(
    database_url: str | None, action: Callable[[UserStore], Awaitable[None]]
) -> None:
    async with app.open_user_store(resolve_database_url(database_url)) as store:
        await action(store)


@user.command()
@click.argument("username")
@_password_source
@database_url_option
def add(username: str, password_stdin: bool, generate: bool, database_url: str | None) -> None:
    """Create USERNAME; asks for the password twice unless told otherwise."""
    password, generated = _obtain_password(password_stdin, generate)

    async def action(store: UserStore) -> None:
        await accounts.add_user(store, username, password)

    run_command(_with_store(database_url, action))
    click.echo(f"user {username} added")
    if generated:
        click.echo(f"password: {password}")


@user.command()
@click.argument("username")
@_password_source
@database_url_option
def passwd(username: str, password_stdin: bool, generate: bool, database_url: str | None) -> None:
    """Set a new password for USERNAME."""
    password, generated = _obtain_password(password_stdin, generate)

    async def action(store: UserStore) -> None:
        await accounts.change_password(store, username, password)

    run_command(_with_store(database_url, action))
    click.echo(f"password of {username} changed")
    if generated:
        click.echo(f"password: {password}")


@user.command(name="list")
@database_url_option
def list_(database_url: str | None) -> None:
    """List accounts: name, enabled, created, last login."""
    rows: list[tuple[str, str, str, str]] = []

    async def action(store: UserStore) -> None:
        for record in await accounts.list_users(store):
            rows.append(
                (
                    record.username,
                    "yes" if record.enabled else "no",
                    record.created_at.strftime("%Y-%m-%d %H:%M:%SZ"),
                    record.last_login_at.strftime("%Y-%m-%d %H:%M:%SZ")
                    if record.last_login_at
                    else "never",
                )
            )

    run_command(_with_store(database_url, action))
    header = ("USER", "ENABLED", "CREATED", "LAST LOGIN")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


@user.command()
@click.argument("username")
@database_url_option
def disable(username: str, database_url: str | None) -> None:
    """Refuse USERNAME's logins from the next connection on (the account is kept)."""

    async def action(store: UserStore) -> None:
        await accounts.disable(store, username)

    run_command(_with_store(database_url, action))
    click.echo(f"user {username} disabled")


@user.command()
@click.argument("username")
@database_url_option
def enable(username: str, database_url: str | None) -> None:
    """Allow USERNAME to log in again."""

    async def action(store: UserStore) -> None:
        await accounts.enable(store, username)

    run_command(_with_store(database_url, action))
    click.echo(f"user {username} enabled")


@user.command()
@click.argument("username")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@database_url_option
def delete(username: str, yes: bool, database_url: str | None) -> None:
    """Delete USERNAME's account (its audit history is kept)."""
    if not yes:
        click.confirm(f"Delete user {username}?", abort=True)

    async def action(store: UserStore) -> None:
        await accounts.delete(store, username)

    run_command(_with_store(database_url, action))
    click.echo(f"user {username} deleted")
