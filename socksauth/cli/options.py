"""Options shared by several commands, declared once; and running a command's coroutine."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

import click

from socksauth import app
from socksauth.errors import ConfigError, DatabaseError, SchemaOutOfDate, UserError
from socksauth.settings_source import settings_source

F = TypeVar("F", bound=Callable[..., Any])
T = TypeVar("T")


def database_url_option(function: F) -> F:
    return click.option(
        "--database-url",
        envvar="SOCKSAUTH_DATABASE_URL",
        show_envvar=True,
        metavar="URL",
        help="sqlite+aiosqlite:///PATH or postgresql+asyncpg://USER@HOST/DB "
        "[default: database_url in $SOCKSAUTH_CONFIG or /etc/socksauth/socksauth.toml, "
        "else $XDG_DATA_HOME/socksauth/socksauth.sqlite3]",
    )(function)


def resolve_database_url(url: str | None) -> str:
    """``url`` (flag or SOCKSAUTH_DATABASE_URL), else the config file's, else the embedded
    store: the same database `serve` uses, so accounts are added where the server looks."""
    if url:
        return url
    with reported_errors():
        configured = settings_source(None, {}, app.default_database_url).values()
    configured_url: str | None = configured["database_url"].value
    return configured_url or app.default_database_url()


def resolve_quota_time_zone() -> str:
    """The quota_time_zone `serve` uses (config file, SOCKSAUTH_QUOTA_TIME_ZONE), for showing
    when quotas reset."""
    with reported_errors():
        configured = settings_source(None, {}, app.default_database_url).values()
    zone: str = configured["quota_time_zone"].value
    return zone


@contextlib.contextmanager
def reported_errors() -> Iterator[None]:
    """Our errors become one line on stderr and an exit code, never a traceback.

    Bad input (a setting, a user name) exits 2; a database that is behind or unreachable, or
    an address we cannot listen on, exits 1.
    """
    try:
        yield
    except (ConfigError, UserError) as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(2)
    except (SchemaOutOfDate, DatabaseError) as error:
        click.echo(f"Error: {error}", err=True)
        sys.exit(1)
    except OSError as error:  # e.g. the listen address is in use
        click.echo(f"Error: {error.strerror or error}", err=True)
        sys.exit(1)


def run_command(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a command's coroutine with reported_errors()."""
    with reported_errors():
        return app.run(coroutine)
