"""The settings flags of `serve`, derived from the option table, and `socksauth config check`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from socksauth import app
from socksauth.cli.options import reported_errors
from socksauth.errors import ConfigError
from socksauth.settings_source import (
    CONFIG_PATH_VARIABLE,
    DEFAULT_CONFIG_PATH,
    OPTIONS,
    Many,
    Option,
    SettingsSource,
    Switch,
    default_value,
    render,
    settings_source,
)

F = TypeVar("F", bound=Callable[..., Any])

CONFIG_KEY = "config"


def _shown_default(option: Option) -> str:
    """`` [default: ...]`` for --help, from Settings' own default, unless the help says it."""
    if "[default:" in option.help:
        return ""
    value = option.kind.to_toml(default_value(option))
    if value is None or value == []:
        text = "none"
    elif isinstance(value, bool):
        text = "on" if value else "off"
    elif isinstance(value, list):
        text = " ".join(value)
    else:
        text = f"{value:g}" if isinstance(value, float) else str(value)
    return f" [default: {text}]"


def _click_option(option: Option) -> Callable[[F], F]:
    help_text = f"{option.help}{_shown_default(option)} [env: {option.variable}]"
    if isinstance(option.kind, Switch):
        return click.option(
            f"{option.flag}/--no-{option.name}", option.key, default=None, help=help_text
        )
    # No defaults here: a value click filled in could not be told from one that was given,
    # and would hide the file and the environment. Defaults are Settings' own.
    return click.option(
        option.flag,
        option.key,
        multiple=isinstance(option.kind, Many),
        default=None,
        metavar=option.metavar or None,
        help=help_text,
    )


def settings_options(*, workers: bool = True) -> Callable[[F], F]:
    """Adds ``--config`` and one flag per option (``--workers`` only if ``workers``)."""

    def decorate(function: F) -> F:
        for option in reversed(OPTIONS):
            if workers or option.field != "workers":
                function = _click_option(option)(function)
        return click.option(
            "--config",
            CONFIG_KEY,
            metavar="PATH",
            help=f"TOML settings file. [env: {CONFIG_PATH_VARIABLE}; default: "
            f"{DEFAULT_CONFIG_PATH} if it exists] Precedence: flags > SOCKSAUTH_* variables > "
            "file > defaults.",
        )(function)

    return decorate


def source_from_flags(flags: Mapping[str, Any]) -> SettingsSource:
    """The settings sources of the running command: its ``--config``, this process's
    environment, and the flags that were really given on the command line."""
    context = click.get_current_context()
    given = {
        option.key: flags[option.key]
        for option in OPTIONS
        if option.key in flags
        and context.get_parameter_source(option.key) is ParameterSource.COMMANDLINE
    }
    return settings_source(flags.get(CONFIG_KEY), given, app.default_database_url)


@click.group()
def config() -> None:
    """Check the settings `serve` would use."""


@config.command()
@settings_options()
def check(**flags: Any) -> None:
    """Validate the settings (file, SOCKSAUTH_* variables, flags) and print the effective ones.

    The output is a valid config file, with the database password shown as ***.
    """
    with reported_errors():
        source = source_from_flags(flags)
        settings = source.load()
        workers = source.workers()
        # The scheme is checked here too: `serve` would refuse it only when connecting.
        try:
            app.check_database_url(settings.database_url)
        except ConfigError as error:
            raise ConfigError(f"database_url: {error}") from None
    origin = source.config_path or "none"
    click.echo(f"# socksauth effective settings; file: {origin}")
    click.echo(render(settings, workers, app.redacted_database_url), nl=False)
