"""Composition root: builds engine → stores → auth → audit → server in one AsyncExitStack;
signals."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from socksauth.audit import AuditLog
from socksauth.auth.authenticator import Authenticator, LoginRecorder
from socksauth.config import Settings
from socksauth.logs import get_logger
from socksauth.server.audit import AuditObserver
from socksauth.server.listener import ProxyServer
from socksauth.store import migrate
from socksauth.store.audit import SqlAuditStore
from socksauth.store.database import (
    create_engine,
    database_errors,
    default_audit_spill_path,
    default_sqlite_url,
    redact_url,
)
from socksauth.store.interfaces import AuditReader, UserStore
from socksauth.store.users import SqlUserStore

log = get_logger("app")

T = TypeVar("T")


@contextlib.asynccontextmanager
async def open_user_store(database_url: str) -> AsyncIterator[UserStore]:
    """A user store on a schema that is current, for the CLI's account commands."""
    engine = create_engine(database_url)
    try:
        with database_errors():
            await migrate.ensure_current(engine)
            yield SqlUserStore(engine)
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def open_audit_reader(database_url: str) -> AsyncIterator[AuditReader]:
    """The audit on a schema that is current, for `socksauth audit` and `socksauth stats`."""
    engine = create_engine(database_url)
    try:
        with database_errors():
            await migrate.ensure_current(engine)
            yield SqlAuditStore(engine)
    finally:
        await engine.dispose()


async def upgrade_database(database_url: str) -> str:
    """Migrate to head; returns the revision now current."""
    engine = create_engine(database_url)
    try:
        with database_errors():
            await migrate.upgrade(engine)
            return await migrate.current(engine) or ""
    finally:
        await engine.dispose()


async def database_revision(database_url: str) -> tuple[str | None, str]:
    """(the database's revision or None, the revision this code needs)."""
    engine = create_engine(database_url)
    try:
        with database_errors():
            return await migrate.current(engine), migrate.head()
    finally:
        await engine.dispose()


@contextlib.asynccontextmanager
async def running_server(settings: Settings) -> AsyncIterator[ProxyServer]:
    """A started ProxyServer and everything it needs; on exit, all closed in reverse."""
    async with contextlib.AsyncExitStack() as stack:
        engine = create_engine(settings.database_url)
        stack.push_async_callback(engine.dispose)
        with database_errors():
            await migrate.ensure_current(engine)
        users = SqlUserStore(engine)
        executor = ThreadPoolExecutor(
            max_workers=settings.password_verify_threads, thread_name_prefix="verify"
        )
        stack.callback(executor.shutdown, wait=True, cancel_futures=True)
        logins = await stack.enter_async_context(LoginRecorder(users))
        authenticator = Authenticator(users, executor, logins)
        await authenticator.start()
        # Entered before the server, so it is flushed after the server has stopped and every
        # client's entry is in.
        audit_log = await stack.enter_async_context(
            AuditLog(
                SqlAuditStore(engine),
                node=settings.node_name,
                spill_path=settings.audit_spill_path
                or default_audit_spill_path(settings.database_url, settings.node_name),
            )
        )
        observer = AuditObserver(audit_log, settings.node_name)
        server = await stack.enter_async_context(ProxyServer(settings, authenticator, observer))
        log.info("serving with users from %s", redact_url(settings.database_url))
        yield server


async def serve(
    settings: Settings,
    on_ready: Callable[[ProxyServer], Awaitable[None] | None] | None = None,
    shutdown_trigger: asyncio.Event | None = None,
) -> None:
    """Run until SIGINT/SIGTERM (or ``shutdown_trigger``); a second signal forces exit."""
    stop = shutdown_trigger or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)

    def on_signal(signum: int) -> None:
        if stop.is_set():
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            sys.exit(1)
        log.info("%s: shutting down", signal.Signals(signum).name)
        stop.set()

    if shutdown_trigger is None:
        for signum in signals:
            loop.add_signal_handler(signum, on_signal, signum)
    try:
        async with running_server(settings) as server:
            if on_ready is not None:
                result = on_ready(server)
                if result is not None:
                    await result
            await stop.wait()
    finally:
        if shutdown_trigger is None:
            for signum in signals:
                loop.remove_signal_handler(signum)


def default_database_url() -> str:
    """The embedded SQLite store's URL (its directory is created)."""
    return default_sqlite_url()


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed (an optional dependency), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)
