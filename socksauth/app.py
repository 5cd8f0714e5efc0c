"""Composition root: builds engine → stores → auth → audit → server in one AsyncExitStack;
signals."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from socksauth.audit import AuditLog
from socksauth.auth.authenticator import Authenticator, LoginRecorder
from socksauth.auth.user_cache import UserCache
from socksauth.config import ListenAddress, Settings
from socksauth.logs import get_logger
from socksauth.server.access import Access
from socksauth.server.audit import AuditObserver
from socksauth.server.listener import ProxyServer, bind_listeners
from socksauth.store import migrate
from socksauth.store.audit import SqlAuditStore
from socksauth.store.changes import SqlChangeFeed
from socksauth.store.database import (
    connected,
    create_engine,
    database_errors,
    default_audit_spill_path,
    default_sqlite_url,
    parse_url,
    redact_url,
)
from socksauth.store.interfaces import AuditReader, RuleStore, UserStore
from socksauth.store.leases import SqlConnectionLeases
from socksauth.store.rules import SqlRuleStore
from socksauth.store.users import SqlUserStore

log = get_logger("app")

T = TypeVar("T")


@contextlib.asynccontextmanager
async def open_user_store(database_url: str) -> AsyncIterator[UserStore]:
    """A user store on a schema that is current, for the CLI's account commands."""
    async with connected(database_url) as engine:
        await migrate.ensure_current(engine)
        yield SqlUserStore(engine)


@contextlib.asynccontextmanager
async def open_rule_store(database_url: str) -> AsyncIterator[RuleStore]:
    """The destination rules on a schema that is current, for `socksauth rule`."""
    async with connected(database_url) as engine:
        await migrate.ensure_current(engine)
        yield SqlRuleStore(engine)


@contextlib.asynccontextmanager
async def open_audit_reader(database_url: str) -> AsyncIterator[AuditReader]:
    """The audit on a schema that is current, for `socksauth audit` and `socksauth stats`."""
    async with connected(database_url) as engine:
        await migrate.ensure_current(engine)
        yield SqlAuditStore(engine)


async def upgrade_database(database_url: str) -> str:
    """Migrate to head; returns the revision now current."""
    async with connected(database_url) as engine:
        await migrate.upgrade(engine)
        return await migrate.current(engine) or ""


async def database_revision(database_url: str) -> tuple[str | None, str]:
    """(the database's revision or None, the revision this code needs)."""
    async with connected(database_url) as engine:
        return await migrate.current(engine), migrate.head()


@contextlib.asynccontextmanager
async def running_server(
    settings: Settings, listen_sockets: Sequence[socket.socket] = ()
) -> AsyncIterator[ProxyServer]:
    """A started ProxyServer and everything it needs; on exit, all closed in reverse.

    ``listen_sockets``: sockets a supervisor bound for this worker, instead of settings.listen.
    """
    async with contextlib.AsyncExitStack() as stack:
        engine = create_engine(settings.database_url)
        stack.push_async_callback(engine.dispose)
        with database_errors():
            await migrate.ensure_current(engine)
        users = SqlUserStore(engine)
        # Logins read accounts from memory; the change feed (below) empties it on any change.
        cached_users = UserCache(users)
        executor = ThreadPoolExecutor(
            max_workers=settings.password_verify_threads, thread_name_prefix="verify"
        )
        stack.callback(executor.shutdown, wait=True, cancel_futures=True)
        logins = await stack.enter_async_context(LoginRecorder(users))
        authenticator = Authenticator(
            cached_users, executor, logins, max_concurrent=settings.password_verify_threads
        )
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
        changes = SqlChangeFeed(engine)
        stack.push_async_callback(changes.close)
        with database_errors():
            leases = await stack.enter_async_context(
                SqlConnectionLeases(engine, settings.node_name)
            )
        access = Access(
            settings,
            rules=SqlRuleStore(engine),
            users=users,
            changes=changes,
            on_users_changed=cached_users.invalidate,
            leases=leases,
        )
        with database_errors():
            # The revision first: a change made after it was read is one the watch sees.
            await access.check_changes()
            await access.load_rules()
        server = await stack.enter_async_context(
            ProxyServer(settings, authenticator, observer, listen_sockets, access)
        )
        log.info("serving with users from %s", redact_url(settings.database_url))
        yield server


async def serve(
    settings: Settings,
    on_ready: Callable[[ProxyServer], Awaitable[None] | None] | None = None,
    shutdown_trigger: asyncio.Event | None = None,
    listen_sockets: Sequence[socket.socket] = (),
    signals: Sequence[signal.Signals] = (signal.SIGINT, signal.SIGTERM),
) -> None:
    """Run until one of ``signals`` (or ``shutdown_trigger``); a second SIGINT forces exit.

    A second SIGTERM is ignored: service managers signal every process of the service, so
    a worker may get the supervisor's forwarded SIGTERM and the manager's own.
    """
    stop = shutdown_trigger or asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if not stop.is_set():
            log.info("%s: shutting down", name)
            stop.set()
        elif signum == signal.SIGINT:
            log.warning("second SIGINT: exiting now, without a graceful shutdown")
            logging.shutdown()
            os._exit(130)
        else:
            log.info("%s: already shutting down", name)

    if shutdown_trigger is None:
        for signum in signals:
            loop.add_signal_handler(signum, on_signal, signum)
    try:
        async with running_server(settings, listen_sockets) as server:
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


def check_database_url(url: str) -> None:
    """ConfigError unless ``url`` names a database driver we support (no connection made)."""
    parse_url(url)


def redacted_database_url(url: str) -> str:
    """``url`` with its password replaced by ``***``, safe to print."""
    return redact_url(url)


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop when it is installed (an optional dependency), else asyncio's loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    return uvloop.run(main)


# A worker that dies sooner than this after its start is not restarted: it would only die again
# (bad settings, a database that refuses us); the supervisor stops and reports instead.
WORKER_MIN_UPTIME_SECONDS = 5.0


def serve_workers(settings: Settings, workers: int) -> int:
    """Run ``workers`` processes that share the listening ports (SO_REUSEPORT); supervise them.

    The parent binds every socket once (so port 0 means the same port for all), forks the
    workers, forwards SIGINT/SIGTERM to them, restarts one that dies unexpectedly, and returns
    the exit code once all have exited. Each worker has its own event loop, database pool and
    audit node name (``NODE/wN``), so crash recovery of one never touches another's rows.
    """
    run(_check_database(settings.database_url))
    socket_sets = bind_listeners(settings, workers)
    bound = tuple(
        ListenAddress(host=sock.getsockname()[0], port=sock.getsockname()[1])
        for sock in socket_sets[0]
    )
    for address in bound:
        log.info("listening on %s (%d workers)", address, workers)
    # What a restarted worker binds: the real ports, also where the settings said port 0.
    rebind_settings = dataclasses.replace(settings, listen=bound)
    children: dict[int, tuple[int, float]] = {}  # pid → (worker index, start time)
    stopping = False
    exit_code = 0

    def start(index: int) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                # Ctrl-C reaches the whole process group; the supervisor decides what it
                # means for the workers (SIGTERM, or SIGKILL the second time).
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                for other, sockets in enumerate(socket_sets):
                    if other != index:
                        for sock in sockets:
                            sock.close()
                worker_settings = dataclasses.replace(
                    settings, node_name=f"{settings.node_name}/w{index}"
                )
                run(
                    serve(
                        worker_settings,
                        listen_sockets=socket_sets[index],
                        signals=(signal.SIGTERM,),
                    )
                )
                code = 0
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = (index, time.monotonic())

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        if stopping and signum == signal.SIGINT:
            log.warning("second SIGINT: killing the workers")
            for pid in children:
                os.kill(pid, signal.SIGKILL)
            return
        stopping = True
        for pid in children:
            os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    for index in range(workers):
        start(index)
    for sockets in socket_sets:
        for sock in sockets:
            sock.close()  # the workers hold their own copies
    while children:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        index, started = children.pop(pid)
        code = os.waitstatus_to_exitcode(status)
        if stopping or code == 0:
            exit_code = exit_code or (code if code > 0 else 0)
            continue
        if time.monotonic() - started < WORKER_MIN_UPTIME_SECONDS:
            log.error("worker %d exited with %d right after starting; stopping", index, code)
            exit_code = 1
            stopping = True
            for other in children:
                os.kill(other, signal.SIGTERM)
            continue
        log.error("worker %d exited with %d; restarting it", index, code)
        # The listening sockets were closed in the parent: a restarted worker binds anew on
        # the same port, which SO_REUSEPORT allows while the others keep serving.
        socket_sets[index] = bind_listeners(rebind_settings, 1)[0]
        start(index)
        for sock in socket_sets[index]:
            sock.close()
    return exit_code


async def _check_database(database_url: str) -> None:
    async with connected(database_url) as engine:
        await migrate.ensure_current(engine)
