"""`socksauth admin`: a token is printed once and stored as its SHA-256 only; grant and
withdraw mark accounts; bad input is one line and exit code 2."""

from __future__ import annotations

import hashlib

from cli_runner import cli
from e2e import ALICE
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.store.admin import SqlAdminCredentials
from socksauth.store.users import SqlUserStore


async def test_a_token_is_shown_once_and_only_its_hash_is_stored(
    database_url: str, engine: AsyncEngine
) -> None:
    created = await cli("admin", "token", "create", "oncall", "--database-url", database_url)
    assert created.exit_code == 0, created.output
    token = created.output.strip()
    assert token.startswith("sa_") and len(token) > 40
    async with engine.connect() as conn:
        stored = (await conn.execute(text("SELECT name, token_hash FROM admin_tokens"))).all()
    assert [tuple(row) for row in stored] == [
        ("oncall", hashlib.sha256(token.encode()).hexdigest())
    ]
    listed = await cli("admin", "token", "list", "--database-url", database_url)
    assert listed.output.startswith("oncall  ") and token not in listed.output
    again = await cli("admin", "token", "create", "oncall", "--database-url", database_url)
    assert again.exit_code == 2 and "exists already" in again.output
    revoked = await cli("admin", "token", "revoke", "oncall", "--database-url", database_url)
    assert revoked.exit_code == 0
    assert await SqlAdminCredentials(engine).token_names() == []
    missing = await cli("admin", "token", "revoke", "oncall", "--database-url", database_url)
    assert missing.exit_code == 2 and "no token named" in missing.output


async def test_grant_and_withdraw_mark_an_account_admin(
    database_url: str, user_store: SqlUserStore
) -> None:
    granted = await cli("admin", "grant", ALICE, "--database-url", database_url)
    assert granted.exit_code == 0, granted.output
    alice = await user_store.get_user(ALICE)
    assert alice is not None and alice.is_admin
    withdrawn = await cli("admin", "withdraw", ALICE, "--database-url", database_url)
    assert withdrawn.exit_code == 0
    alice = await user_store.get_user(ALICE)
    assert alice is not None and not alice.is_admin
    nobody = await cli("admin", "grant", "nobody", "--database-url", database_url)
    assert nobody.exit_code == 2 and "no user named 'nobody'" in nobody.output
