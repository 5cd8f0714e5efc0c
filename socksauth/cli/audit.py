"""`socksauth audit [prune]` and `socksauth stats`: who went where, and per-user totals."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import click

from socksauth import app
from socksauth.cli.options import (
    database_url_option,
    resolve_database_url,
    resolve_quota_time_zone,
    run_command,
)
from socksauth.connection_record import Outcome
from socksauth.store.interfaces import (
    OPEN,
    PROTOCOLS,
    AuditEntry,
    AuditQuery,
    UserStats,
)

_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}
_DURATION = re.compile(r"(\d+)([smhdw])")
OUTCOMES = sorted({outcome.value for outcome in Outcome} | {OPEN})
FORMATS = ("table", "json", "csv")


def parse_duration(text: str) -> timedelta:
    """``90d``, ``12h``, ``30m``, ``45s``, ``2w``; ValueError otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 30m, 12h, 7d or 2w")
    return timedelta(**{_UNITS[match.group(2)]: int(match.group(1))})


def parse_moment(text: str, now: datetime) -> datetime:
    """A duration ago (``1h``, ``7d``) or an ISO 8601 time; a time without zone is UTC."""
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"{text!r} is neither a duration (1h, 7d) nor an ISO 8601 time "
            "(2026-11-24 or 2026-11-24T18:00:00+01:00)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def _moment(ctx: click.Context, param: click.Parameter, value: str | None) -> datetime | None:
    # A callback, not a ParamType subclass: ParamType is generic only in recent click.
    if value is None:
        return None
    try:
        return parse_moment(value, datetime.now(UTC))
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None


def _duration(ctx: click.Context, param: click.Parameter, value: str) -> timedelta:
    try:
        return parse_duration(value)
    except ValueError as error:
        raise click.BadParameter(str(error), ctx, param) from None


_protocol_option = click.option(
    "--protocol",
    type=click.Choice(PROTOCOLS),
    help="Only clients that spoke this on the shared port: socks5 or http.",
)

_format_option = click.option(
    "--format",
    "output_format",
    type=click.Choice(FORMATS),
    default="table",
    show_default=True,
    help="table for people, json or csv for programs.",
)


@click.group(invoke_without_command=True)
@click.option("--user", "username", metavar="NAME", help="Only this user's entries.")
@click.option(
    "--since", metavar="TIME", callback=_moment, help="From this time: 1h, 7d (ago) or ISO 8601."
)
@click.option(
    "--until", metavar="TIME", callback=_moment, help="Before this time: 1h, 7d (ago) or ISO 8601."
)
@click.option("--target", metavar="TEXT", help="Target host or dialled address contains TEXT.")
@click.option("--outcome", type=click.Choice(OUTCOMES), help="Only entries that ended so.")
@_protocol_option
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    default=100,
    show_default=True,
    help="At most this many entries, newest first.",
)
@_format_option
@database_url_option
@click.pass_context
def audit(
    ctx: click.Context,
    username: str | None,
    since: datetime | None,
    until: datetime | None,
    target: str | None,
    outcome: str | None,
    protocol: str | None,
    limit: int,
    output_format: str,
    database_url: str | None,
) -> None:
    """List audited connections and failed logins, newest first (or prune old ones).

    A row with no COMMAND is a refused handshake (wrong password, unknown user, ...).
    OUTCOME "open" is a connection still running; "interrupted", one a crashed process left.
    """
    if ctx.invoked_subcommand is not None:
        return
    query = AuditQuery(
        username=username,
        since=since,
        until=until,
        target=target,
        outcome=outcome,
        protocol=protocol,
        limit=limit,
    )
    url = resolve_database_url(database_url)

    async def find() -> Sequence[AuditEntry]:
        async with app.open_audit_reader(url) as reader:
            return await reader.find_entries(query)

    entries = run_command(find())
    _print([_entry_row(entry) for entry in entries], _ENTRY_HEADER, output_format)


@audit.command()
@click.option(
    "--older-than",
    metavar="DURATION",
    callback=_duration,
    required=True,
    help="Delete finished entries that started longer ago than this (90d, 12w).",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@database_url_option
def prune(older_than: timedelta, yes: bool, database_url: str | None) -> None:
    """Delete old finished entries (open connections are kept)."""
    before = datetime.now(UTC) - older_than
    if not yes:
        click.confirm(
            f"Delete audit entries that started before {_time(before)}?", abort=True, err=True
        )
    url = resolve_database_url(database_url)

    async def delete() -> int:
        async with app.open_audit_reader(url) as reader:
            return await reader.prune(before)

    deleted = run_command(delete())
    click.echo(f"{deleted} audit entries deleted")


@click.command()
@click.option(
    "--since", metavar="TIME", callback=_moment, help="From this time: 1h, 7d (ago) or ISO 8601."
)
@click.option(
    "--until", metavar="TIME", callback=_moment, help="Before this time: 1h, 7d (ago) or ISO 8601."
)
@_protocol_option
@_format_option
@database_url_option
def stats(
    since: datetime | None,
    until: datetime | None,
    protocol: str | None,
    output_format: str,
    database_url: str | None,
) -> None:
    """Per user: connections, failed logins, bytes each way, tunnel time, last seen; and for
    users with a quota, its use now (every node's traffic), limit and reset time."""
    url = resolve_database_url(database_url)

    async def compute() -> Sequence[UserStats]:
        async with app.open_audit_reader(url) as reader:
            return await reader.user_stats(since, until, protocol)

    quotas = run_command(app.quota_report(url, resolve_quota_time_zone()))
    rows = []
    for item in run_command(compute()):
        row = _stats_row(item)
        quota = quotas.get(item.username) if item.username is not None else None
        row["quota_used"] = None if quota is None else quota.used
        row["quota_limit"] = None if quota is None else quota.limit_text
        row["quota_resets_at"] = (
            None if quota is None or quota.resets_at is None else _time(quota.resets_at)
        )
        rows.append(row)
    _print(rows, _STATS_HEADER, output_format)


_ENTRY_HEADER = (
    "started_at",
    "ended_at",
    "duration_seconds",
    "node",
    "user",
    "client",
    "protocol",
    "command",
    "target",
    "dialed",
    "reply",
    "outcome",
    "bytes_from_client",
    "bytes_to_client",
    "datagrams_from_client",
    "datagrams_to_client",
    "requests",
    "id",
)
_STATS_HEADER = (
    "user",
    "connections",
    "failed_logins",
    "bytes_from_client",
    "bytes_to_client",
    "tunnel_seconds",
    "last_seen",
    "quota_used",
    "quota_limit",
    "quota_resets_at",
)
# Columns the table leaves out to stay readable; json and csv have them all.
_TABLE_SKIPS = frozenset({"node", "datagrams_from_client", "datagrams_to_client", "requests", "id"})


def _entry_row(entry: AuditEntry) -> dict[str, Any]:
    target = None
    if entry.target_host is not None:
        host = entry.target_host
        target = f"[{host}]:{entry.target_port}" if ":" in host else f"{host}:{entry.target_port}"
    client = entry.client_host
    client = f"[{client}]:{entry.client_port}" if ":" in client else f"{client}:{entry.client_port}"
    return {
        "started_at": _time(entry.started_at),
        "ended_at": None if entry.ended_at is None else _time(entry.ended_at),
        "duration_seconds": entry.duration_seconds,
        "node": entry.node,
        "user": entry.username,
        "client": client,
        "protocol": entry.protocol,
        "command": entry.command,
        "target": target,
        "dialed": entry.dialed,
        "reply": entry.reply,
        "outcome": entry.outcome if entry.outcome is not None else OPEN,
        "bytes_from_client": entry.bytes_from_client,
        "bytes_to_client": entry.bytes_to_client,
        "datagrams_from_client": entry.datagrams_from_client,
        "datagrams_to_client": entry.datagrams_to_client,
        "requests": entry.requests,
        "id": str(entry.id),
    }


def _stats_row(item: UserStats) -> dict[str, Any]:
    return {
        "user": item.username,
        "connections": item.connections,
        "failed_logins": item.failed_logins,
        "bytes_from_client": item.bytes_from_client,
        "bytes_to_client": item.bytes_to_client,
        "tunnel_seconds": round(item.tunnel_seconds, 3),
        "last_seen": _time(item.last_seen),
    }


def _time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _print(rows: list[dict[str, Any]], header: Sequence[str], output_format: str) -> None:
    if output_format == "json":
        click.echo(json.dumps(rows, indent=2))
    elif output_format == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(header), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        click.echo(buffer.getvalue(), nl=False)
    else:
        _print_table(rows, [name for name in header if name not in _TABLE_SKIPS])


def _print_table(rows: list[dict[str, Any]], columns: Sequence[str]) -> None:
    cells = [[column.upper().replace("_", " ") for column in columns]]
    for row in rows:
        cells.append([_cell(row[column]) for column in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        )


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)
