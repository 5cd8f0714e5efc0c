"""`socksauth user add|list|passwd|disable|enable|delete`."""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import click

from socksauth import app
from socksauth.auth import accounts, passwords
from socksauth.cli.options import (
    database_url_option,
    resolve_database_url,
    resolve_quota_time_zone,
    run_command,
)
from socksauth.errors import ConfigError
from socksauth.server.egress import parse_entry
from socksauth.server.limits import format_rate, parse_rate
from socksauth.server.quota import QuotaStatus, format_usage, parse_quota
from socksauth.store.interfaces import UserRecord, UserStore


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
    """List accounts: name, enabled, created, last login, and their limits ("-": none);
    a quota as used/limit per period (every node's traffic) and when it resets."""
    rows: list[tuple[str, ...]] = []
    url = resolve_database_url(database_url)
    quotas = run_command(app.quota_report(url, resolve_quota_time_zone()))

    async def action(store: UserStore) -> None:
        for record in await accounts.list_users(store):
            quota = quotas.get(record.username)
            rows.append(
                (
                    record.username,
                    "yes" if record.enabled else "no",
                    _when(record.created_at),
                    _when(record.last_login_at) if record.last_login_at else "never",
                    "-" if record.max_connections is None else str(record.max_connections),
                    "-"
                    if record.max_bandwidth_bytes_per_second is None
                    else format_rate(record.max_bandwidth_bytes_per_second),
                    _when(record.expires_at) if record.expires_at else "-",
                    _quota(quota),
                    _resets(quota),
                )
            )

    run_command(_with_store(url, action))
    header = (
        "USER", "ENABLED", "CREATED", "LAST LOGIN", "MAX CONN", "MAX BANDWIDTH", "EXPIRES",
        "QUOTA USED", "RESETS",
    )  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )


def _quota(quota: QuotaStatus | None) -> str:
    if quota is None:
        return "-"
    return f"{format_usage(quota.used)} of {quota.limit_text}"


def _resets(quota: QuotaStatus | None) -> str:
    if quota is None:
        return "-"
    return "rolling" if quota.resets_at is None else _when(quota.resets_at)


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


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


def _limit(text: str | None, parse: Callable[[str], int]) -> int | accounts.Keep | None:
    if text is None:
        return accounts.KEEP
    if text.lower() in ("none", "unlimited"):
        return None
    return parse(text)


def _expiry(text: str | None) -> datetime | accounts.Keep | None:
    """A date (the account stops working at its start, UTC) or an ISO date and time."""
    if text is None:
        return accounts.KEEP
    if text.lower() in ("never", "none"):
        return None
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r}: write a date (2027-01-31) or a date and time", param_hint="--expires"
        ) from None
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _connections(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not a number", param_hint="--max-connections"
        ) from None


@user.command(name="set")
@click.argument("username")
@click.option(
    "--max-connections",
    metavar="N|none",
    help="Concurrent tunnels, associations and bindings; more are refused (reply 0x02).",
)
@click.option(
    "--max-bandwidth",
    metavar="RATE|none",
    help="Bytes per second each way over all the user's tunnels, e.g. 10MiB/s or 500kB/s.",
)
@click.option(
    "--expires",
    metavar="DATE|never",
    help="The account stops working at this date (UTC, 2027-01-31) or ISO date and time; "
    "its open tunnels end within seconds.",
)
@click.option(
    "--quota",
    metavar="SIZE/PERIOD|none",
    help="Traffic both ways over all nodes per period: 10GiB/month, 500MB/day, 2GiB/week, or "
    "50GB/30d (rolling); once used up, requests get reply 0x02 and tunnels end.",
)
@click.option(
    "--client-network",
    "client_networks",
    multiple=True,
    metavar="CIDR|any",
    help="The user may log in only from this client network (repeatable; behind a load "
    "balancer, the client the PROXY header names); from elsewhere the login fails as with a "
    "wrong password. 'any' clears the list.",
)
@click.option(
    "--egress",
    multiple=True,
    metavar="ADDRESS|pool:NAME|none",
    help="A local address (or a pool from serve --egress-pool) the user's outbound "
    "connections and UDP datagrams leave from; repeatable: round robin, or sticky per "
    "session key (alice-session-KEY). 'none' clears the list.",
)
@database_url_option
def set_(
    username: str,
    max_connections: str | None,
    max_bandwidth: str | None,
    expires: str | None,
    quota: str | None,
    client_networks: tuple[str, ...],
    egress: tuple[str, ...],
    database_url: str | None,
) -> None:
    """Set USERNAME's limits; options left out keep their value."""
    try:
        connections = _limit(max_connections, _connections)
        bandwidth = _limit(max_bandwidth, parse_rate)
    except ConfigError as error:
        raise click.BadParameter(str(error), param_hint="--max-bandwidth") from None
    traffic: tuple[int, str] | accounts.Keep | None = accounts.KEEP
    try:
        if quota is not None:
            traffic = None if quota.lower() in ("none", "unlimited") else parse_quota(quota)
    except ConfigError as error:
        raise click.BadParameter(str(error), param_hint="--quota") from None
    expires_at = _expiry(expires)
    networks = _client_networks(client_networks)
    egress_entries = _egress(egress)
    changed: list[UserRecord] = []

    async def action(store: UserStore) -> None:
        changed.append(
            await accounts.set_limits(
                store,
                username,
                max_connections=connections,
                max_bandwidth_bytes_per_second=bandwidth,
                expires_at=expires_at,
                quota=traffic,
                client_networks=networks,
                egress=egress_entries,
            )
        )

    run_command(_with_store(database_url, action))
    record = changed[0]
    click.echo(
        f"user {username}: max connections "
        f"{record.max_connections if record.max_connections is not None else 'none'}, "
        "max bandwidth "
        + (
            f"{record.max_bandwidth_bytes_per_second} B/s"
            if record.max_bandwidth_bytes_per_second is not None
            else "none"
        )
        + ", expires "
        + (record.expires_at.strftime("%Y-%m-%d %H:%M:%SZ") if record.expires_at else "never")
        + ", quota "
        + (
            f"{record.quota_bytes} B/{record.quota_period}"
            if record.quota_bytes is not None
            else "none"
        )
        + ", client networks "
        + (" ".join(record.client_networks) if record.client_networks else "any")
        + ", egress "
        + (" ".join(record.egress) if record.egress else "any")
    )


def _egress(texts: tuple[str, ...]) -> list[str] | accounts.Keep:
    """The egress entries as given (normalised), [] for 'none', KEEP when not given."""
    if not texts:
        return accounts.KEEP
    if [text.lower() for text in texts] in (["none"], ["any"]):
        return []
    entries = []
    for text in texts:
        try:
            entries.append(parse_entry(text.strip()))
        except ValueError:
            raise click.BadParameter(
                f"{text!r} is neither an IP address nor pool:NAME", param_hint="--egress"
            ) from None
    return entries


def _client_networks(texts: tuple[str, ...]) -> list[str] | accounts.Keep:
    """The networks as given (normalised CIDRs), [] for 'any', KEEP when not given."""
    if not texts:
        return accounts.KEEP
    if [text.lower() for text in texts] in (["any"], ["none"]):
        return []
    networks = []
    for text in texts:
        try:
            networks.append(str(ipaddress.ip_network(text.strip(), strict=False)))
        except ValueError:
            raise click.BadParameter(
                f"{text!r} is not an IP network (CIDR)", param_hint="--client-network"
            ) from None
    return networks
