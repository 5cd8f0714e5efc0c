"""`socksauth throttle list|clear`: the login throttle's delays and lockouts, on every node."""

from __future__ import annotations

import ipaddress
import time
from datetime import UTC, datetime

import click

from socksauth import app
from socksauth.cli.options import (
    database_url_option,
    reported_errors,
    resolve_database_url,
    run_command,
)
from socksauth.config import ThrottleSettings
from socksauth.logs import escape
from socksauth.settings_source import settings_source
from socksauth.store.interfaces import ThrottlePair


@click.group()
def throttle() -> None:
    """Failed-login delays and lockouts per (user, client address), shared by every node.

    See the README's "Login throttling" for the policy and its settings.
    """


def _configured() -> ThrottleSettings:
    """The throttle settings of the configuration file and environment (for delays)."""
    with reported_errors():
        return settings_source(None, {}, app.default_database_url).load().throttle_settings()


def _delay(settings: ThrottleSettings, failures: int) -> float:
    over = failures - settings.free_failures
    if over < 0:
        return 0.0
    return min(settings.delay_seconds * 2.0 ** min(over, 62), settings.max_delay_seconds)


def _when(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")


@throttle.command(name="list")
@database_url_option
def list_(database_url: str | None) -> None:
    """Show the pairs with recent failures: who, from where, how many failures, and the
    lockout (until when) or the delay their next attempt gets."""
    settings = _configured()
    now = time.time()

    async def active() -> list[ThrottlePair]:
        async with app.open_throttle_store(resolve_database_url(database_url)) as store:
            return list(await store.active(now, settings.window_seconds))

    pairs = run_command(active())
    header = ("USER", "CLIENT", "FAILURES", "STATE", "LOCKOUTS", "LAST FAILURE")
    rows = [header]
    for pair in pairs:
        if pair.locked_until > now:
            state = f"locked until {_when(pair.locked_until)}"
        elif pair.failures:
            delay = _delay(settings, pair.failures)
            state = f"delayed {delay:g} s" if delay else "counting"
        else:
            continue  # a familiar mark without failures: nothing to show
        rows.append(
            (
                escape(pair.username),
                pair.address,
                str(pair.failures),
                state,
                str(pair.lockouts),
                _when(pair.last_failure_at) if pair.last_failure_at else "-",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    if len(rows) == 1:
        click.echo("(no delays or lockouts)")


def _network(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise click.BadParameter(f"{value!r} is not an IP address or network (CIDR)") from None


@throttle.command()
@click.option("--user", "username", metavar="NAME", help="Only this user's pairs.")
@click.option(
    "--client",
    metavar="ADDRESS|CIDR",
    callback=_network,
    help="Only pairs whose client address is in this network.",
)
@database_url_option
def clear(username: str | None, client: str | None, database_url: str | None) -> None:
    """Lift delays and lockouts: of a user, of client addresses, of both, or (neither
    given) of everyone. Every node applies it within its change delay (PostgreSQL:
    milliseconds; SQLite: change_poll_interval)."""

    async def clear_pairs() -> int:
        async with app.open_throttle_store(resolve_database_url(database_url)) as store:
            return await store.clear(username, client)

    cleared = run_command(clear_pairs())
    who = "everyone" if username is None else repr(username)
    where = "" if client is None else f" from {client}"
    click.echo(f"cleared {cleared} pair(s) for {who}{where}")
