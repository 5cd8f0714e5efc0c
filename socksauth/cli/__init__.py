"""The `socksauth` command: thin click commands that parse, call one function, print."""

from __future__ import annotations

import click

from socksauth import __version__
from socksauth.cli.admin import admin
from socksauth.cli.audit import audit, stats
from socksauth.cli.config import config
from socksauth.cli.db import db
from socksauth.cli.rules import rule
from socksauth.cli.serve import quickstart, serve
from socksauth.cli.sessions import sessions
from socksauth.cli.throttle import throttle
from socksauth.cli.top import top
from socksauth.cli.users import user


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="socksauth")
def main() -> None:
    """socksauth: an authenticated, audited SOCKS5 proxy with users in SQL."""


main.add_command(serve)
main.add_command(quickstart)
main.add_command(user)
main.add_command(db)
main.add_command(rule)
main.add_command(audit)
main.add_command(stats)
main.add_command(config)
main.add_command(throttle)
main.add_command(sessions)
main.add_command(top)
main.add_command(admin)
