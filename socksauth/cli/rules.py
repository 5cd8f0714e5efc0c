"""`socksauth rule add|list|delete`: the destination rules, first match decides."""

from __future__ import annotations

import click

from socksauth import app
from socksauth.cli.options import database_url_option, resolve_database_url, run_command
from socksauth.rules import parse_rule
from socksauth.store.interfaces import NewRule, RuleRecord


@click.group()
def rule() -> None:
    """Which targets users may reach: rules read in order, the first that matches decides.

    Without a matching rule a target is allowed, except loopback, link-local (cloud
    metadata), multicast and the proxy itself, which only an allow rule with a network
    inside them unlocks. A running server picks up changes within seconds.
    """


@rule.command()
@click.argument("action", type=click.Choice(["allow", "deny"], case_sensitive=False))
@click.option("--user", "username", metavar="NAME", help="Only for this user. [default: all]")
@click.option("--cidr", metavar="NETWORK", help="Target address in this network (v4 or v6).")
@click.option("--domain", metavar="NAME", help="Target name: example.com, or *.example.com.")
@click.option("--port", "ports", metavar="PORT[-PORT]", help="Target port or range.")
@click.option(
    "--command",
    type=click.Choice(["connect", "bind", "udp"], case_sensitive=False),
    help="Only for this SOCKS command. [default: all]",
)
@click.option(
    "--position",
    type=click.IntRange(min=1),
    metavar="N",
    help="Insert as rule N (later rules move down). [default: last]",
)
@database_url_option
def add(
    action: str,
    username: str | None,
    cidr: str | None,
    domain: str | None,
    ports: str | None,
    command: str | None,
    position: int | None,
    database_url: str | None,
) -> None:
    """Add a rule: ACTION is allow or deny; options left out match anything."""
    try:
        parsed = parse_rule(
            action, username=username, cidr=cidr, domain=domain, ports=ports, command=command
        )
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    new = NewRule(
        action=parsed.action.value,
        username=parsed.username,
        cidr=None if parsed.network is None else str(parsed.network),
        domain=parsed.domain,
        port_min=parsed.port_min,
        port_max=parsed.port_max,
        command=None if command is None else command.lower(),
    )

    async def add_rule() -> RuleRecord:
        async with app.open_rule_store(resolve_database_url(database_url)) as store:
            return await store.add_rule(new, position)

    record = run_command(add_rule())
    click.echo(f"rule {record.id} added at position {record.position}: {parsed}")


@rule.command(name="list")
@database_url_option
def list_(database_url: str | None) -> None:
    """List the rules in the order they are evaluated."""

    async def list_rules() -> list[RuleRecord]:
        async with app.open_rule_store(resolve_database_url(database_url)) as store:
            return list(await store.list_rules())

    records = run_command(list_rules())
    header = ("#", "ID", "ACTION", "USER", "COMMAND", "NETWORK", "DOMAIN", "PORTS")
    rows = [header]
    for index, record in enumerate(records, start=1):
        ports = "*"
        if record.port_min is not None:
            ports = (
                str(record.port_min)
                if record.port_min == record.port_max
                else f"{record.port_min}-{record.port_max}"
            )
        rows.append(
            (
                str(index),
                str(record.id),
                record.action,
                record.username or "*",
                record.command or "*",
                record.cidr or "*",
                record.domain or "*",
                ports,
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        click.echo(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    if not records:
        click.echo("(no rules: every target is allowed except the protected ones)")


@rule.command()
@click.argument("rule_id", type=int, metavar="ID")
@database_url_option
def delete(rule_id: int, database_url: str | None) -> None:
    """Delete the rule with this ID (see `rule list`)."""

    async def delete_rule() -> None:
        async with app.open_rule_store(resolve_database_url(database_url)) as store:
            await store.delete_rule(rule_id)

    run_command(delete_rule())
    click.echo(f"rule {rule_id} deleted")
