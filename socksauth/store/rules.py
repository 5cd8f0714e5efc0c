"""SqlRuleStore: the destination rules table behind the RuleStore Protocol."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.errors import UserError
from socksauth.store.interfaces import NewRule, RuleRecord
from socksauth.store.models import RuleRow

_COLUMNS = (
    RuleRow.id,
    RuleRow.position,
    RuleRow.action,
    RuleRow.username,
    RuleRow.cidr,
    RuleRow.domain,
    RuleRow.port_min,
    RuleRow.port_max,
    RuleRow.command,
    RuleRow.created_at,
)


class SqlRuleStore:
    """Rules in SQL; every method is one short transaction on ``engine``."""

    __slots__ = ("_engine",)

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def list_rules(self) -> Sequence[RuleRecord]:
        """Every rule, in evaluation order: by position, then by id."""
        async with self._engine.connect() as conn:
            result = await conn.execute(select(*_COLUMNS).order_by(RuleRow.position, RuleRow.id))
            return [_record(row) for row in result.all()]

    async def add_rule(self, rule: NewRule, position: int | None = None) -> RuleRecord:
        """Store ``rule`` at ``position`` (1 = first; rules at or after it move down one),
        or after the last rule."""
        now = datetime.now(UTC)
        async with self._engine.begin() as conn:
            if position is None:
                last = await conn.scalar(select(func.max(RuleRow.position)))
                position = (last or 0) + 1
            else:
                await conn.execute(
                    update(RuleRow)
                    .where(RuleRow.position >= position)
                    .values(position=RuleRow.position + 1)
                )
            values: dict[str, Any] = {
                "position": position,
                "action": rule.action,
                "username": rule.username,
                "cidr": rule.cidr,
                "domain": rule.domain,
                "port_min": rule.port_min,
                "port_max": rule.port_max,
                "command": rule.command,
                "created_at": now,
            }
            result = await conn.execute(insert(RuleRow).values(**values).returning(RuleRow.id))
            rule_id = result.scalar_one()
        return RuleRecord(id=rule_id, **values)

    async def delete_rule(self, rule_id: int) -> None:
        """Delete a rule; UserError if there is no rule with that id."""
        async with self._engine.begin() as conn:
            result = await conn.execute(delete(RuleRow).where(RuleRow.id == rule_id))
        if result.rowcount == 0:
            raise UserError(f"no rule with id {rule_id}")


def _record(row: Any) -> RuleRecord:
    created = row.created_at
    # SQLite hands back the naive UTC value stored; PostgreSQL an aware one.
    created = created.replace(tzinfo=UTC) if created.tzinfo is None else created.astimezone(UTC)
    return RuleRecord(
        id=row.id,
        position=row.position,
        action=row.action,
        username=row.username,
        cidr=row.cidr,
        domain=row.domain,
        port_min=row.port_min,
        port_max=row.port_max,
        command=row.command,
        created_at=created,
    )
