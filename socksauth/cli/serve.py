"""`socksauth serve` and `socksauth quickstart`."""

from __future__ import annotations

import sys
from typing import Any

import click

from socksauth import app, logs
from socksauth.auth import accounts, passwords
from socksauth.cli.config import settings_options, source_from_flags
from socksauth.cli.options import reported_errors, run_command
from socksauth.config import Settings
from socksauth.errors import UserError
from socksauth.server.listener import ProxyServer
from socksauth.settings_source import SettingsSource
from socksauth.supervisor import WORKER_MIN_UPTIME_SECONDS, Supervisor


def _load(flags: dict[str, Any]) -> tuple[SettingsSource, Settings]:
    """The sources and the settings they give now; bad settings exit 2 with one line."""
    with reported_errors():
        source = source_from_flags(flags)
        return source, source.load()


@click.command()
@settings_options()
# For tests that kill a worker: they need not wait out the crash-loop guard first.
@click.option(
    "--worker-min-uptime",
    type=click.FloatRange(min=0),
    default=WORKER_MIN_UPTIME_SECONDS,
    hidden=True,
    help="Seconds a worker must have run for its failure to restart it rather than stop all.",
)
def serve(worker_min_uptime: float, **flags: Any) -> None:
    """Run the proxy until SIGTERM or SIGINT (a graceful shutdown: connections get
    --shutdown-grace seconds; a second signal closes them at once). SIGHUP reloads the
    settings without dropping connections."""
    source, settings = _load(flags)
    with reported_errors():
        workers = source.workers()
        app.check_listen_addresses(settings)
    logs.configure(settings.log_level, settings.log_format)
    if workers == 1:
        run_command(app.serve(settings, reload_settings=source.load))
    else:
        # The supervisor runs no event loop of its own: it forks, and forking a process
        # with a running loop would copy that loop into every worker.
        with reported_errors():
            code = Supervisor(
                settings, workers, reload_settings=source.load, min_uptime=worker_min_uptime
            ).run()
        sys.exit(code)


@click.command()
@click.option(
    "--user",
    "username",
    default="alice",
    show_default=True,
    help="The demo account to create (or give a new password).",
)
@settings_options(workers=False)
def quickstart(username: str, **flags: Any) -> None:
    """Set up the database, create a demo user with a fresh password, print a curl line, serve.

    For a first try on one machine: the demo user's password is (re)generated at every run.
    """
    _, settings = _load(flags)
    logs.configure(settings.log_level, settings.log_format)
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
