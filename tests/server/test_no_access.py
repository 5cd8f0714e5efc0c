"""A proxy built without an Access (no policy, no limits: what bench/bench_audit.py runs) is
served by the shared null Access, NO_ACCESS: every target allowed, nothing counted."""

from __future__ import annotations

import contextlib

from e2e import UDP_ASSOCIATE, EchoServer, assert_serves_a_good_client, reply_to

from socksauth import app
from socksauth.auth.user_cache import UserCache
from socksauth.config import ListenAddress, Settings
from socksauth.store.users import SqlUserStore


async def test_a_proxy_without_access_serves_every_command_through_the_null_access(
    database_url: str, user_store: SqlUserStore, echo_server: EchoServer
) -> None:
    settings = Settings(
        database_url=database_url, listen=(ListenAddress(host="127.0.0.1", port=0),)
    )
    async with contextlib.AsyncExitStack() as stack:
        engine = await app.enter_engine(stack, database_url)
        users = SqlUserStore(engine)
        authenticator = await app.enter_authenticator(stack, settings, UserCache(users), users)
        server = await app.enter_proxy_server(stack, settings, authenticator, None)
        assert server.access is None
        port = server.bound[0].port
        # Loopback, which a real policy protects by default, is reachable: no policy at all.
        await assert_serves_a_good_client(port, echo_server)
        await assert_serves_a_good_client(port, echo_server)  # nothing was counted to refuse
        assert await reply_to(port, "127.0.0.1", 0, UDP_ASSOCIATE) == 0x00
