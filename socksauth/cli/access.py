"""`serve` options for the destination policy and the admission limits, declared once.

They reach Settings through the click context (``access_settings()``), so the commands that
take them need no parameter each.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

_META_KEY = "socksauth.access"


def _store(setting: str, convert: Callable[[Any], Any] = lambda value: value) -> Any:
    def callback(context: click.Context, parameter: click.Parameter, value: Any) -> None:
        context.meta.setdefault(_META_KEY, {})[setting] = convert(value)

    return callback


def _zero_is_none(value: float | int) -> float | int | None:
    return None if value == 0 else value


def access_options(function: F) -> F:
    """Adds the policy and limit options to a command."""
    options = [
        click.option(
            "--deny-private-networks",
            is_flag=True,
            expose_value=False,
            callback=_store("deny_private_networks"),
            help="Also deny targets in RFC 1918, CGNAT and IPv6 ULA ranges unless a rule "
            "inside them allows (loopback, link-local and metadata are always denied).",
        ),
        click.option(
            "--max-connections",
            type=click.IntRange(min=0),
            default=10_000,
            show_default=True,
            expose_value=False,
            callback=_store("max_connections", _zero_is_none),
            help="Client connections at once; more are closed at accept. 0: no cap.",
        ),
        click.option(
            "--max-unauthenticated",
            type=click.IntRange(min=0),
            default=1_000,
            show_default=True,
            expose_value=False,
            callback=_store("max_unauthenticated", _zero_is_none),
            help="Clients still in the handshake at once. 0: no cap.",
        ),
        click.option(
            "--max-unauthenticated-per-address",
            type=click.IntRange(min=0),
            default=32,
            show_default=True,
            expose_value=False,
            callback=_store("max_unauthenticated_per_address", _zero_is_none),
            help="Clients in the handshake from one address (IPv6: one /64). 0: no cap.",
        ),
        click.option(
            "--account-check-interval",
            type=click.FloatRange(min=0),
            default=2.0,
            show_default=True,
            expose_value=False,
            callback=_store("account_check_seconds", _zero_is_none),
            help="Seconds between re-reads of rules and connected users' accounts; a "
            "disabled, deleted, expired or re-passworded user's tunnels end then. 0: never.",
        ),
        click.option(
            "--idle-timeout",
            type=click.FloatRange(min=0),
            default=900.0,
            show_default=True,
            expose_value=False,
            callback=_store("idle_timeout_seconds", _zero_is_none),
            help="Close a tunnel after this many seconds without a byte either way. 0: never.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def access_settings() -> dict[str, Any]:
    """The Settings fields the options of ``access_options`` collected."""
    context = click.get_current_context(silent=True)
    if context is None:
        return {}
    return dict(context.meta.get(_META_KEY, {}))
