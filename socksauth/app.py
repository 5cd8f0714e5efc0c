"""Composition root: builds engine → stores → auth → audit → server in one AsyncExitStack;
signals."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import functools
import gc
import hashlib
import logging
import os
import secrets
import shutil
import signal
import socket
import tempfile
import time
import zoneinfo
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth import logs, metrics
from socksauth.audit import AuditLog
from socksauth.auth import passwords
from socksauth.auth.authenticator import Authenticator, LoginRecorder
from socksauth.auth.throttle import LoginThrottle
from socksauth.auth.throttle_sharing import SharedThrottle
from socksauth.auth.user_cache import UserCache
from socksauth.config import ListenAddress, Settings, verify_threads
from socksauth.connection_record import ConnectionObserver, Observers
from socksauth.errors import ConfigError, DatabaseError
from socksauth.health import describe
from socksauth.logs import get_logger
from socksauth.server.access import Access
from socksauth.server.admin import AdminListener, Readiness, bind_admin_socket
from socksauth.server.audit import AuditObserver
from socksauth.server.dashboard import Authorize, Dashboard
from socksauth.server.listener import (
    ProxyServer,
    bind_listeners,
    check_listen_free,
    resolve_listen,
)
from socksauth.server.metrics import AuditSampler, MetricsObserver, ThrottleMetrics
from socksauth.server.quota import QuotaStatus, quota_statuses
from socksauth.store import migrate
from socksauth.store.admin import SqlAdminCredentials
from socksauth.store.audit import SqlAuditStore
from socksauth.store.changes import SqlChangeFeed
from socksauth.store.database import (
    connected,
    create_engine,
    database_errors,
    default_audit_spill_path,
    default_sqlite_url,
    on_database_error,
    parse_url,
    redact_url,
)
from socksauth.store.interfaces import (
    AdminCredentials,
    AuditReader,
    RuleStore,
    SessionReader,
    ThrottleStore,
    UserStore,
)
from socksauth.store.leases import SqlConnectionLeases
from socksauth.store.nodes import SqlNodeHeartbeat
from socksauth.store.rules import SqlRuleStore
from socksauth.store.sessions import SqlSessionStore
from socksauth.store.throttle import SqlThrottleStore
from socksauth.store.usage import SqlTrafficUsage
from socksauth.store.users import SqlUserStore

log = get_logger("app")

T = TypeVar("T")


@contextlib.asynccontextmanager
async def current_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a database whose schema is current (SchemaOutOfDate otherwise): what
    every CLI command and the supervisor's start-up check open."""
    async with connected(database_url) as engine:
        await migrate.ensure_current(engine)
        yield engine


@contextlib.asynccontextmanager
async def open_user_store(database_url: str) -> AsyncIterator[UserStore]:
    """A user store on a schema that is current, for the CLI's account commands."""
    async with current_engine(database_url) as engine:
        yield SqlUserStore(engine)


@contextlib.asynccontextmanager
async def open_rule_store(database_url: str) -> AsyncIterator[RuleStore]:
    """The destination rules on a schema that is current, for `socksauth rule`."""
    async with current_engine(database_url) as engine:
        yield SqlRuleStore(engine)


@contextlib.asynccontextmanager
async def open_audit_reader(database_url: str) -> AsyncIterator[AuditReader]:
    """The audit on a schema that is current, for `socksauth audit` and `socksauth stats`."""
    async with current_engine(database_url) as engine:
        yield SqlAuditStore(engine)


@contextlib.asynccontextmanager
async def open_throttle_store(database_url: str) -> AsyncIterator[ThrottleStore]:
    """The login throttle's shared state on a current schema, for `socksauth throttle`."""
    async with current_engine(database_url) as engine:
        yield SqlThrottleStore(engine)


async def quota_report(database_url: str, zone_name: str) -> dict[str, QuotaStatus]:
    """Every user's quota and its use now (across nodes), for `user list` and `stats`."""
    try:
        zone = zoneinfo.ZoneInfo(zone_name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"quota_time_zone: {zone_name!r} is not a known time zone") from None
    async with current_engine(database_url) as engine:
        users = await SqlUserStore(engine).list_users()
        return await quota_statuses(users, SqlTrafficUsage(engine), datetime.now(UTC), zone)


@contextlib.asynccontextmanager
async def open_session_reader(database_url: str) -> AsyncIterator[SessionReader]:
    """Live sessions and nodes of every node on the database, for `socksauth sessions`,
    `socksauth top` and kicks."""
    async with current_engine(database_url) as engine:
        yield SqlSessionStore(engine)


@contextlib.asynccontextmanager
async def open_admin_credentials(database_url: str) -> AsyncIterator[AdminCredentials]:
    """Dashboard tokens and admin accounts, for `socksauth admin`."""
    async with current_engine(database_url) as engine:
        yield SqlAdminCredentials(engine)


def new_admin_token() -> tuple[str, str]:
    """(a fresh dashboard token to show once, the SHA-256 hex to store): 256 random bits,
    so a plain hash is enough (no guessing to slow down, unlike a password)."""
    token = "sa_" + secrets.token_urlsafe(32)
    return token, token_hash(token)


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogateescape")).hexdigest()


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
    settings: Settings,
    listen_sockets: Sequence[socket.socket] = (),
    admin_socket: socket.socket | None = None,
) -> AsyncIterator[ProxyServer]:
    """A started ProxyServer and everything it needs; on exit, all closed in reverse.

    ``listen_sockets``: sockets a supervisor bound for this worker, instead of settings.listen.
    ``admin_socket``: the admin listener's socket (a supervisor's, shared by its workers),
    instead of binding settings.admin_listen.
    """
    async with contextlib.AsyncExitStack() as stack:
        # The addresses first: one that cannot be listened on is one line, before the
        # database is even opened (and before anything there is to close and log).
        if admin_socket is None and settings.admin_listen is not None:
            admin_socket = bind_admin_socket(settings.admin_listen)
            stack.callback(admin_socket.close)
        if not listen_sockets:
            check_listen_free(settings)
        engine = create_engine(settings.database_url)
        stack.push_async_callback(engine.dispose)
        # Nothing is measured unless someone can read it: no cost per connection when off.
        measured = None
        servers: list[ProxyServer] = []  # the one server, once started, for /readyz
        admin = None
        if admin_socket is not None or settings.admin_listen is not None:
            measured = metrics.Metrics(per_user=settings.metrics_per_user)
            on_database_error(engine, measured.database_errors.inc)
        with database_errors():
            await migrate.ensure_current(engine)
        users = SqlUserStore(engine)
        # Logins read accounts from memory; the change feed (below) empties it on any change.
        cached_users = UserCache(users)
        # A worker's settings carry its share already; one process has every core.
        threads = verify_threads(settings.password_verify_threads, workers=1)
        executor = ThreadPoolExecutor(
            max_workers=threads,
            thread_name_prefix="verify",
            initializer=passwords.lower_thread_priority,
        )
        stack.callback(executor.shutdown, wait=True, cancel_futures=True)
        logins = await stack.enter_async_context(LoginRecorder(users))
        throttle = LoginThrottle(
            settings.throttle_settings(),
            observer=ThrottleMetrics(measured) if measured is not None else None,
        )
        authenticator = Authenticator(
            cached_users,
            executor,
            logins,
            throttle=throttle,
            max_concurrent=threads,
        )
        await authenticator.start()
        stack.callback(authenticator.close)
        # Failures, lockouts and clears shared with every process on the store; entered
        # before the server, so what the last clients did is written after they are gone.
        sharing = None
        if settings.login_throttle:
            sharing = await stack.enter_async_context(
                SharedThrottle(throttle, SqlThrottleStore(engine))
            )
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
        audit_observer = AuditObserver(audit_log, settings.node_name)
        if settings.audit_interim_seconds is not None:
            await _enter_task(
                stack, audit_observer.run_interim(settings.audit_interim_seconds), "audit-interim"
            )
        observer: ConnectionObserver = audit_observer
        if measured is not None:
            observer = Observers(observer, MetricsObserver(measured))
            sampler = AuditSampler(measured, audit_log)
            needed = migrate.head()

            async def readiness() -> str | None:
                if not servers or not servers[0].listening:
                    return "the proxy is not listening"
                problem = await migrate.readiness_problem(
                    engine, needed, READY_DATABASE_TIMEOUT_SECONDS
                )
                if problem is not None and problem.startswith("database:"):
                    # Warm users are still served (/healthz stays 200); cold logins are
                    # refused (store_unavailable): send new clients to another node.
                    return f"{problem}; new logins cannot be checked"
                return problem

            dashboard = Dashboard(
                sessions=SqlSessionStore(engine),
                rules=SqlRuleStore(engine),
                audit=SqlAuditStore(engine),
                authorize=admin_authorizer(authenticator, SqlAdminCredentials(engine)),
            )
            admin = await _enter_admin_listener(
                stack, settings, admin_socket, measured, sampler, readiness, dashboard
            )
        changes = SqlChangeFeed(engine)
        stack.push_async_callback(changes.close)
        with database_errors():
            leases = await stack.enter_async_context(
                SqlConnectionLeases(engine, settings.node_name)
            )
        sessions = SqlSessionStore(engine)
        access = Access(
            settings,
            rules=SqlRuleStore(engine),
            users=users,
            changes=changes,
            on_users_changed=(
                cached_users.invalidate
                if sharing is None
                else _both(cached_users.invalidate, sharing.store_changed)
            ),
            leases=leases,
            usage=SqlTrafficUsage(engine),
            egress_source=users,
            kills=sessions,
        )
        # The next login after a change committed anywhere is decided on the new state.
        cached_users.before_lookup = access.ensure_current
        if admin is not None:
            access.set_other_endpoints([(admin.bound.host, admin.bound.port)])
        with database_errors():
            # The revision first: a change made after it was read is one the watch sees.
            await access.check_changes()
            await access.load_rules()
            await access.check_egress()
        # Entered before the server, so the row goes after every client has: a clean stop
        # leaves no node, and its sessions are gone from the live list with it.
        with database_errors():
            await stack.enter_async_context(
                SqlNodeHeartbeat(
                    engine,
                    settings.node_name,
                    connections=lambda: servers[0].active_clients if servers else 0,
                )
            )
        server = await stack.enter_async_context(
            ProxyServer(settings, authenticator, observer, listen_sockets, access)
        )
        servers.append(server)
        log.info("serving with users from %s", redact_url(settings.database_url))
        yield server


def _both(first: Callable[[], None], second: Callable[[], None]) -> Callable[[], None]:
    def call() -> None:
        first()
        second()

    return call


async def _enter_task(
    stack: contextlib.AsyncExitStack, work: Coroutine[Any, Any, None], name: str
) -> None:
    """Run ``work`` as a task owned by ``stack``: cancelled and awaited when it closes."""
    task = asyncio.get_running_loop().create_task(work, name=name)

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)


def admin_authorizer(authenticator: Authenticator, credentials: AdminCredentials) -> Authorize:
    """Who may open the dashboard: ``Authorization: Bearer TOKEN`` with a token of
    `socksauth admin token create`, or HTTP Basic of an account marked admin (checked like a
    SOCKS login: off the loop, throttled per address and name)."""

    async def authorize(header: str | None, client_host: str) -> bool:
        if not header:
            return False
        scheme, _, value = header.partition(" ")
        scheme, value = scheme.lower(), value.strip()
        try:
            if scheme == "bearer":
                return await credentials.token_name(token_hash(value)) is not None
            if scheme == "basic":
                decoded = base64.b64decode(value, validate=True).decode()
                name, colon, password = decoded.partition(":")
                if not colon:
                    return False
                user = await authenticator.authenticate(name, password, client_host)
                return user is not None and user.is_admin
        except (ValueError, binascii.Error):  # not base64, not UTF-8
            return False
        except DatabaseError as error:
            log.warning("dashboard: cannot check credentials: %s", error)
        return False

    return authorize


# /readyz waits this long for the database before it reports it unreachable.
READY_DATABASE_TIMEOUT_SECONDS = 2.0


async def _enter_admin_listener(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    admin_socket: socket.socket | None,
    measured: metrics.Metrics,
    sampler: AuditSampler,
    readiness: Readiness,
    dashboard: Dashboard | None = None,
) -> AdminListener:
    """The admin listener on ``stack``, and the task that samples the audit for it.

    Entered before the proxy's listeners, so it is closed after them: during a graceful
    shutdown /readyz says 503 (not listening) while the tunnels drain."""
    sampling = asyncio.get_running_loop().create_task(sampler.run(), name="audit-sampler")

    async def stop_sampling() -> None:
        sampling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sampling

    stack.push_async_callback(stop_sampling)
    if admin_socket is None:
        assert settings.admin_listen is not None
        admin_socket = bind_admin_socket(settings.admin_listen)
    return await stack.enter_async_context(
        AdminListener(
            admin_socket,
            exposition=measured.exposition,
            readiness=readiness,
            before_scrape=sampler.sample,
            dashboard=dashboard,
        )
    )


# Built once at start (the engine, the audit's node and spill file, the verification threads,
# the admin listener): a reload that changes them is told they need a restart.
RESTART_ONLY_SETTINGS = (
    "database_url",
    "node_name",
    "audit_spill_path",
    "password_verify_threads",
    "admin_listen",
    "metrics_per_user",
    # The login throttle is built once with its counters; keep them over a reload.
    "login_throttle",
    "login_free_failures",
    "login_delay_seconds",
    "login_max_delay_seconds",
    "login_lockout_failures",
    "login_lockout_seconds",
    "login_max_lockout_seconds",
    "login_window_seconds",
    "login_remembered_passwords",
    "login_familiar_days",
    "login_familiar_max_failures",
    "login_spray_usernames",
    "login_max_delayed_per_address",
    "login_exempt_networks",
    "audit_interim_seconds",
)


def reloadable(current: Settings, new: Settings) -> Settings:
    """``new``, with the settings a running process cannot change kept as in ``current``
    (each change logged, by name only: a database URL may hold a password)."""
    kept = {}
    for name in RESTART_ONLY_SETTINGS:
        if getattr(new, name) != getattr(current, name):
            log.warning("reload: %s changed; it applies after a restart", name)
            kept[name] = getattr(current, name)
    return dataclasses.replace(new, **kept) if kept else new


async def reload_server(
    server: ProxyServer, reload_settings: Callable[[], Settings] | None
) -> bool:
    """SIGHUP: read the settings again and apply them to ``server`` without touching its
    established clients, and re-read the rules. False (and logged) when the new settings
    are invalid or cannot be applied: the ones in force stay."""
    if reload_settings is not None:
        try:
            new = reloadable(server.settings, reload_settings())
            await server.reload(new)
        except (ConfigError, OSError) as error:
            log.error("reload failed, the settings in force stay: %s", error)
            return False
        logs.configure(new.log_level, new.log_format)
    if server.access is not None:
        try:
            await server.access.load_rules()
        except Exception as error:
            log.warning(
                "reload: could not re-read the rules; the rules in force stay: %s", describe(error)
            )
        try:
            await server.access.check_egress()
        except Exception as error:
            log.warning("reload: could not check the egress addresses: %s", describe(error))
    log.info("reloaded")
    return True


async def serve(
    settings: Settings,
    on_ready: Callable[[ProxyServer], Awaitable[None] | None] | None = None,
    shutdown_trigger: asyncio.Event | None = None,
    listen_sockets: Sequence[socket.socket] = (),
    signals: Sequence[signal.Signals] = (signal.SIGINT, signal.SIGTERM),
    reload_settings: Callable[[], Settings] | None = None,
    *,
    repeat_hurries: bool = True,
    admin_socket: socket.socket | None = None,
) -> None:
    """Run until one of ``signals`` (or ``shutdown_trigger``), then shut down gracefully:
    stop accepting, let handshakes finish, give connections ``shutdown_grace_seconds``,
    close the rest, flush the audit.

    A repeated signal (with ``repeat_hurries``) or SIGQUIT hurries the shutdown: no more
    waiting, every connection is closed now, the audit is still flushed. One more signal
    after that exits at once (code 128 + signal number). Workers pass ``repeat_hurries=False``:
    a service manager signals every process of the service, so a worker may get the
    manager's SIGTERM and its supervisor's; the supervisor sends SIGQUIT to hurry.

    SIGHUP calls ``reload_settings`` and applies the result (``reload_server``).
    """
    stop = shutdown_trigger or asyncio.Event()
    hurry = asyncio.Event()
    reload_requested = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        name = signal.Signals(signum).name
        if not stop.is_set() and signum != signal.SIGQUIT:
            log.info("%s: shutting down gracefully", name)
            stop.set()
        elif not hurry.is_set() and (repeat_hurries or signum == signal.SIGQUIT):
            log.warning("%s: closing every connection now, without waiting", name)
            stop.set()
            hurry.set()
        elif hurry.is_set():
            log.warning("%s: exiting now", name)
            logging.shutdown()
            os._exit(128 + signum)
        else:
            log.info("%s: already shutting down", name)

    handled = [*signals, signal.SIGQUIT] if shutdown_trigger is None else []
    for signum in handled:
        loop.add_signal_handler(signum, on_signal, signum)
    if shutdown_trigger is None:
        loop.add_signal_handler(signal.SIGHUP, reload_requested.set)
        handled.append(signal.SIGHUP)
    try:
        async with running_server(settings, listen_sockets, admin_socket) as server:
            if on_ready is not None:
                result = on_ready(server)
                if result is not None:
                    await result
            reloader = loop.create_task(
                _reload_on_request(server, reload_settings, reload_requested), name="reload"
            )
            try:
                await stop.wait()
            finally:
                reloader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reloader
            await server.stop(
                server.settings.shutdown_grace_seconds, finish_handshakes=True, hurry=hurry
            )
    finally:
        for signum in handled:
            loop.remove_signal_handler(signum)


async def _reload_on_request(
    server: ProxyServer,
    reload_settings: Callable[[], Settings] | None,
    requested: asyncio.Event,
) -> None:
    while True:
        await requested.wait()
        requested.clear()
        await reload_server(server, reload_settings)


def default_database_url() -> str:
    """The embedded SQLite store's URL (its directory is created)."""
    return default_sqlite_url()


def check_listen_addresses(settings: Settings) -> None:
    """ConfigError naming the setting unless every listen address (and the admin listener's)
    resolves; checked before anything starts, so a typo never waits for the database."""
    for address in settings.listen:
        resolve_listen(address)
    if settings.admin_listen is not None:
        resolve_listen(settings.admin_listen, "admin_listen")


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


# What the supervisor handles: stop (SIGINT, SIGTERM), hurry (SIGQUIT), reload (SIGHUP).
SUPERVISOR_SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGQUIT, signal.SIGHUP})

# A worker that dies sooner than this after its start is not restarted: it would only die again
# (bad settings, a database that refuses us); the supervisor stops and reports instead.
WORKER_MIN_UPTIME_SECONDS = 5.0


def serve_workers(
    settings: Settings, workers: int, reload_settings: Callable[[], Settings] | None = None
) -> int:
    """Run ``workers`` processes that share the listening ports (SO_REUSEPORT); supervise them.

    The parent binds every socket once (so port 0 means the same port for all), forks the
    workers, restarts one that dies unexpectedly, and returns the exit code once all have
    exited. Each worker has its own event loop, database pool and audit node name
    (``NODE/wN``), so crash recovery of one never touches another's rows.

    Signals to the parent: SIGTERM/SIGINT → SIGTERM to every worker (graceful shutdown); the
    second → SIGQUIT (close everything now); the third → SIGKILL. SIGQUIT → SIGQUIT. SIGHUP:
    the parent checks ``reload_settings()`` and, when valid, forwards SIGHUP; each worker
    reloads itself and binds new listen addresses with SO_REUSEPORT.
    """
    children: dict[int, tuple[int, float]] = {}  # pid → (worker index, start time)
    stopping = False
    stop_signals = 0
    # A worker started after a reload reloads at once: it was forked with the first settings.
    reloaded = False
    exit_code = 0

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping, stop_signals, exit_code
        stopping = True
        stop_signals = max(stop_signals + 1, 2 if signum == signal.SIGQUIT else 1)
        name = signal.Signals(signum).name
        if stop_signals == 1:
            to_workers = signal.SIGTERM
        elif stop_signals == 2:
            log.warning("%s: the workers close every connection now", name)
            to_workers = signal.SIGQUIT
        else:
            log.warning("%s: killing the workers", name)
            to_workers = signal.SIGKILL
            exit_code = 128 + signum
        for pid in children:
            os.kill(pid, to_workers)

    def reload(signum: int, frame: object) -> None:
        nonlocal reloaded
        if stopping:
            return
        if reload_settings is not None:
            try:
                new = reload_settings()
            except (ConfigError, OSError) as error:
                log.error("reload failed, the settings in force stay: %s", error)
                return
            logs.configure(new.log_level, new.log_format)
        reloaded = True
        for pid in children:
            os.kill(pid, signal.SIGHUP)

    # Installed before the port is announced: a signal sent as soon as it is logged must not
    # meet its default action (SIGHUP's and SIGQUIT's end the process).
    for signum in SUPERVISOR_SIGNALS - {signal.SIGHUP}:
        signal.signal(signum, forward)
    signal.signal(signal.SIGHUP, reload)

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
    # The admin listener: one socket, kept open here so that a restarted worker serves it
    # too; each worker's metrics go to files in one directory, summed by whichever answers.
    admin_socket = None
    metrics_directory = None
    if settings.admin_listen is not None:
        admin_socket = bind_admin_socket(settings.admin_listen)
        metrics_directory = Path(tempfile.mkdtemp(prefix="socksauth-metrics-"))
        metrics.use_multiprocess_directory(metrics_directory)

    def start(index: int) -> None:
        # Held back until the new worker is in ``children`` (and, in the worker, until its
        # own handlers are set): a reload or stop between fork and bookkeeping would miss it.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, SUPERVISOR_SIGNALS)
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                # Ctrl-C reaches the whole process group; the supervisor decides what it
                # means for the workers (SIGTERM, SIGQUIT the second time, then SIGKILL).
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                signal.signal(signal.SIGQUIT, signal.SIG_DFL)
                # A reload asked for before the worker's loop handles SIGHUP is done as soon
                # as the worker has started (as after a reload that preceded its fork).
                reload_pending = reloaded

                def note_reload(signum: int, frame: object) -> None:
                    nonlocal reload_pending
                    reload_pending = True

                signal.signal(signal.SIGHUP, note_reload)
                signal.pthread_sigmask(signal.SIG_SETMASK, mask)
                for other, sockets in enumerate(socket_sets):
                    if other != index:
                        for sock in sockets:
                            sock.close()
                worker_settings = _for_worker(settings, index, workers)
                worker_reload = None
                if reload_settings is not None:
                    worker_reload = functools.partial(
                        _worker_settings, reload_settings, index, workers
                    )

                async def catch_up(server: ProxyServer) -> None:
                    if reload_pending:
                        await reload_server(server, worker_reload)

                run(
                    serve(
                        worker_settings,
                        on_ready=catch_up,
                        listen_sockets=socket_sets[index],
                        signals=(signal.SIGTERM,),
                        reload_settings=worker_reload,
                        repeat_hurries=False,
                        admin_socket=admin_socket,
                    )
                )
                code = 0
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                logging.shutdown()
                os._exit(code)
        children[pid] = (index, time.monotonic())
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)

    # The workers share what the supervisor built (the imported modules, mostly) copy-on-write;
    # a full collection in a worker would write every one of those objects' GC headers and so
    # copy their pages (~10 MiB per worker, soon after the first thousand tunnels).
    gc.freeze()
    for index in range(workers):
        if not stopping:
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
        if metrics_directory is not None:
            metrics.forget_process(metrics_directory, pid)
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
    if admin_socket is not None:
        admin_socket.close()
    if metrics_directory is not None:
        shutil.rmtree(metrics_directory, ignore_errors=True)
    return exit_code


def _for_worker(settings: Settings, index: int, workers: int) -> Settings:
    """A worker's settings: its own audit node name and its share of the verification threads."""
    return dataclasses.replace(
        settings,
        node_name=f"{settings.node_name}/w{index}",
        password_verify_threads=verify_threads(settings.password_verify_threads, workers),
    )


def _worker_settings(reload_settings: Callable[[], Settings], index: int, workers: int) -> Settings:
    """What a worker reloads: the settings read again, made that worker's."""
    return _for_worker(reload_settings(), index, workers)


async def _check_database(database_url: str) -> None:
    async with current_engine(database_url):
        pass
