"""`socksauth sessions [kill]`: what is open on every node now, and ending it."""

from __future__ import annotations

import asyncio
import getpass
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import click

from socksauth import app
from socksauth.cli.audit import FORMATS, _print, _print_table, _time
from socksauth.cli.options import database_url_option, resolve_database_url, run_command
from socksauth.store.interfaces import AuditEntry, SessionQuery

# How long `kill` waits for the nodes to report the sessions ended.
KILL_WAIT_SECONDS = 5.0

_HEADER = (
    "id",
    "user",
    "command",
    "client",
    "target",
    "node",
    "since",
    "bytes_from_client",
    "bytes_to_client",
    "rate_from_client",
    "rate_to_client",
    "updated_at",
)


def human_bytes(count: float) -> str:
    """``1.5 MiB``-style, for tables."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _address(host: str | None, port: int | None) -> str | None:
    if host is None:
        return None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def session_row(entry: AuditEntry) -> dict[str, Any]:
    """One live session as json/csv show it."""
    return {
        "id": str(entry.id),
        "user": entry.username,
        "command": entry.command,
        "client": _address(entry.client_host, entry.client_port),
        "target": _address(entry.target_host, entry.target_port),
        "node": entry.node,
        "since": _time(entry.started_at),
        "bytes_from_client": entry.bytes_from_client,
        "bytes_to_client": entry.bytes_to_client,
        "rate_from_client": round(entry.rate_from_client or 0.0, 1),
        "rate_to_client": round(entry.rate_to_client or 0.0, 1),
        "updated_at": None if entry.updated_at is None else _time(entry.updated_at),
    }


def _table_row(entry: AuditEntry) -> dict[str, Any]:
    row = session_row(entry)
    for name in ("bytes_from_client", "bytes_to_client"):
        row[name] = human_bytes(row[name])
    for name in ("rate_from_client", "rate_to_client"):
        row[name] = human_bytes(row[name]) + "/s"
    return row


def _session_ids(
    ctx: click.Context, param: click.Parameter, value: Sequence[str]
) -> list[uuid.UUID]:
    ids = []
    for text in value:
        try:
            ids.append(uuid.UUID(text))
        except ValueError:
            raise click.BadParameter(f"{text!r} is not a session id", ctx, param) from None
    return ids


def _format_option(function: Any) -> Any:
    return click.option(
        "--format",
        "output_format",
        type=click.Choice(FORMATS),
        default="table",
        show_default=True,
        help="table for people, json or csv for programs.",
    )(function)


@click.group(invoke_without_command=True)
@click.option("--user", "username", metavar="NAME", help="Only this user's sessions.")
@click.option("--node", metavar="NAME", help="Only the sessions of this node.")
@_format_option
@database_url_option
@click.pass_context
def sessions(
    ctx: click.Context,
    username: str | None,
    node: str | None,
    output_format: str,
    database_url: str | None,
) -> None:
    """List open tunnels, associations and bindings on every live node, oldest first.

    Bytes are counted so far and the rates are over the last interim update (every
    audit_interim_interval seconds, 5 by default). A node that stopped renewing its
    heartbeat (it died) has no sessions here.
    """
    if ctx.invoked_subcommand is not None:
        return
    url = resolve_database_url(database_url)
    query = SessionQuery(username=username, node=node)

    async def find() -> Sequence[AuditEntry]:
        async with app.open_session_reader(url) as reader:
            return await reader.live_sessions(query)

    entries = run_command(find())
    if output_format == "table":
        _print_table([_table_row(entry) for entry in entries], _HEADER[:-1])
    else:
        _print([session_row(entry) for entry in entries], _HEADER, output_format)


def default_requester() -> str:
    """Who asks, as the audit keeps it: the login name and host of this command."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@sessions.command()
@click.argument("session_ids", nargs=-1, metavar="[ID]...", callback=_session_ids)
@click.option("--user", "username", metavar="NAME", help="Every live session of this user.")
@click.option(
    "--client",
    "client_networks",
    metavar="CIDR",
    multiple=True,
    help="With --user: only sessions from this client network. Repeatable.",
)
@click.option(
    "--by",
    metavar="WHO",
    help="Who asks, kept in the audit row. [default: LOGIN@HOST of this command]",
)
@click.option(
    "--wait",
    type=click.FloatRange(min=0),
    default=KILL_WAIT_SECONDS,
    show_default=True,
    help="Seconds to wait for the nodes to end them; 0: do not wait.",
)
@database_url_option
def kill(
    session_ids: list[uuid.UUID],
    username: str | None,
    client_networks: tuple[str, ...],
    by: str | None,
    wait: float,
    database_url: str | None,
) -> None:
    """End sessions on whichever node holds them: by ID, or all of --user NAME.

    The account stays enabled (disable it with `socksauth user disable`). Each session is
    audited with outcome "killed" and who asked. Exit code 1 if one is still open after --wait.
    """
    if not session_ids and username is None:
        raise click.UsageError("name session ids, or --user NAME")
    if client_networks and username is None:
        raise click.UsageError("--client needs --user")
    url = resolve_database_url(database_url)
    requester = by or default_requester()

    async def kick() -> tuple[Sequence[AuditEntry], Sequence[AuditEntry], float]:
        async with app.open_session_reader(url) as reader:
            started = time.monotonic()
            asked = await reader.request_kill(
                by=requester,
                ids=session_ids,
                username=username,
                client_networks=client_networks,
            )
            ids = [entry.id for entry in asked]
            still_open = await reader.find_open(ids)
            deadline = started + wait
            while still_open and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                still_open = await reader.find_open(ids)
            return asked, still_open, time.monotonic() - started

    asked, still_open, seconds = run_command(kick())
    if not asked:
        click.echo("Error: no live session matches", err=True)
        sys.exit(1)
    open_ids = {entry.id for entry in still_open}
    for entry in asked:
        state = "still open" if entry.id in open_ids else "killed"
        if wait == 0:
            state = "asked"
        click.echo(
            f"{state}  {entry.id}  {entry.username or '-'}  "
            f"{_address(entry.client_host, entry.client_port)} -> "
            f"{_address(entry.target_host, entry.target_port) or '-'}  on {entry.node}"
        )
    if wait and open_ids:
        click.echo(f"Error: {len(open_ids)} session(s) still open after {wait:g} s", err=True)
        sys.exit(1)
    if wait:
        click.echo(f"{len(asked)} session(s) ended in {seconds:.2f} s")
