"""`socksauth serve` and `socksauth quickstart`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import click

from socksauth import app, logs
from socksauth.auth import accounts, passwords
from socksauth.cli.access import access_options, access_settings
from socksauth.cli.options import (
    database_url_option,
    reported_errors,
    resolve_database_url,
    run_command,
)
from socksauth.config import Settings, default_workers, parse_listen, parse_networks
from socksauth.errors import ConfigError, UserError
from socksauth.server.listener import ProxyServer


def _server_options(function: Callable[..., Any]) -> Callable[..., Any]:
    options = [
        click.option(
            "--listen",
            multiple=True,
            metavar="HOST:PORT[@CIDR,...]",
            help="Address to listen on, repeatable; [::1]:1080 for IPv6. After @, the only "
            "client networks this listener admits. [default: 127.0.0.1:1080]",
        ),
        click.option(
            "--trusted-network",
            multiple=True,
            metavar="CIDR",
            help="Clients from this network may connect without a password (method 0x00). "
            "Repeatable. [default: none]",
        ),
        click.option(
            "--handshake-timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=10.0,
            show_default=True,
            help="Seconds a client has to finish the SOCKS handshake.",
        ),
        click.option(
            "--connect-timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=10.0,
            show_default=True,
            help="Seconds to connect to a target.",
        ),
        click.option(
            "--udp/--no-udp",
            default=True,
            show_default=True,
            help="Serve UDP ASSOCIATE (RFC 1928 §7); when off it gets reply 0x07.",
        ),
        click.option(
            "--bind/--no-bind",
            default=True,
            show_default=True,
            help="Serve BIND (RFC 1928 §6); when off it gets reply 0x07.",
        ),
        click.option(
            "--log-level",
            type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
            default="INFO",
            show_default=True,
        ),
        database_url_option,
        access_options,
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _settings(
    database_url: str | None,
    listen: tuple[str, ...],
    trusted_network: tuple[str, ...],
    handshake_timeout: float,
    connect_timeout: float,
    udp: bool = True,
    bind: bool = True,
) -> Settings:
    try:
        extra: dict[str, Any] = {}
        if listen:
            extra["listen"] = tuple(parse_listen(text) for text in listen)
        return Settings(
            database_url=resolve_database_url(database_url),
            trusted_networks=parse_networks(trusted_network, "--trusted-network"),
            handshake_timeout_seconds=handshake_timeout,
            connect_timeout_seconds=connect_timeout,
            udp_enabled=udp,
            bind_enabled=bind,
            **access_settings(),
            **extra,
        )
    except ConfigError as error:
        # Bad input is one line on stderr and exit code 2, without click's usage text.
        click.echo(f"Error: {error}", err=True)
        raise SystemExit(2) from None


@click.command()
@_server_options
@click.option(
    "--workers",
    type=click.IntRange(min=1, max=256),
    default=default_workers,
    show_default="number of CPU cores",
    envvar="SOCKSAUTH_WORKERS",
    help="Worker processes sharing the listening ports (SO_REUSEPORT), each with its own loop.",
)
def serve(
    database_url: str | None,
    listen: tuple[str, ...],
    trusted_network: tuple[str, ...],
    handshake_timeout: float,
    connect_timeout: float,
    udp: bool,
    bind: bool,
    log_level: str,
    workers: int,
) -> None:
    """Run the proxy until SIGINT or SIGTERM."""
    settings = _settings(
        database_url, listen, trusted_network, handshake_timeout, connect_timeout, udp, bind
    )
    logs.configure(log_level)
    if workers == 1:
        run_command(_serve(settings))
    else:
        # The supervisor runs no event loop of its own: it forks, and forking a process
        # with a running loop would copy that loop into every worker.
        with reported_errors():
            code = app.serve_workers(settings, workers)
        sys.exit(code)


async def _serve(settings: Settings) -> None:
    await app.serve(settings)


@click.command()
@click.option(
    "--user",
    "username",
    default="alice",
    show_default=True,
    help="The demo account to create (or give a new password).",
)
@_server_options
def quickstart(
    username: str,
    database_url: str | None,
    listen: tuple[str, ...],
    trusted_network: tuple[str, ...],
    handshake_timeout: float,
    connect_timeout: float,
    udp: bool,
    bind: bool,
    log_level: str,
) -> None:
    """Set up the database, create a demo user with a fresh password, print a curl line, serve.

    For a first try on one machine: the demo user's password is (re)generated at every run.
    """
    settings = _settings(
        database_url, listen, trusted_network, handshake_timeout, connect_timeout, udp, bind
    )
    logs.configure(log_level)
    password = passwords.generate_password()
    run_command(_quickstart(settings, username, password))


async def _quickstart(settings: Settings, username: str, password: str) -> None:
    await app.upgrade_database(settings.database_url)
    async with app.open_user_store(settings.database_url) as store:
        try:
            await accounts.add_user(store, username, password)
            verb = "created"
        except UserError:
            await accounts.change_password(store, username, password)
            verb = "given a new password"

    def announce(server: ProxyServer) -> None:
        bound = server.bound[0]
        host = f"[{bound.host}]" if ":" in bound.host else bound.host
        if bound.host in ("0.0.0.0", "::"):
            host = "127.0.0.1"
        click.echo(
            f"\nsocksauth is listening on {bound}; user {username!r} {verb}.\n"
            f"Try it (any URL works):\n\n"
            f"  curl --socks5-hostname {username}:{password}@{host}:{bound.port} "
            f"https://example.com/\n\n"
            f"Targets on this machine (localhost, 127.0.0.1) are denied by default; allow them\n"
            f"with `socksauth rule add allow --cidr 127.0.0.0/8`.\n"
            f"Add users with `socksauth user add NAME`; stop with Ctrl-C.\n",
            err=True,
        )

    await app.serve(settings, on_ready=announce)
