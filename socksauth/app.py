"""Composition root: builds engine → stores → auth → audit → server in one AsyncExitStack;
signals."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import hashlib
import logging
import os
import secrets
import signal
import socket
import zoneinfo
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth import logs, metrics
from socksauth.audit import AuditLog
from socksauth.auth import passwords
from socksauth.auth.authenticator import Authenticator, LoginRecorder
from socksauth.auth.throttle import LoginThrottle
from socksauth.auth.throttle_sharing import SharedThrottle
from socksauth.auth.user_cache import UserCache
from socksauth.config import Settings, verify_threads
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
    UserLookup,
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

    Built from the ``enter_*`` builders below, each entering what it builds on one stack (the
    benchmark builds its proxies from the same ones).
    """
    async with contextlib.AsyncExitStack() as stack:
        # The addresses first: one that cannot be listened on is one line, before the
        # database is even opened (and before anything there is to close and log).
        if admin_socket is None and settings.admin_listen is not None:
            admin_socket = bind_admin_socket(settings.admin_listen)
            stack.callback(admin_socket.close)
        if not listen_sockets:
            check_listen_free(settings)
        # Nothing is measured unless someone can read it: no cost per connection when off.
        measured = None
        if admin_socket is not None:
            measured = metrics.Metrics(per_user=settings.metrics_per_user)
        engine = await enter_engine(stack, settings.database_url, measured)
        users = SqlUserStore(engine)
        # Logins read accounts from memory; the change feed (below) empties it on any change.
        cached_users = UserCache(users)
        authenticator = await enter_authenticator(stack, settings, cached_users, users, measured)
        # Failures, lockouts and clears shared with every process on the store; entered
        # before the server, so what the last clients did is written after they are gone.
        sharing = None
        if settings.login_throttle:
            sharing = await stack.enter_async_context(
                SharedThrottle(authenticator.throttle, SqlThrottleStore(engine))
            )
        audit_log = await enter_audit_log(stack, settings, engine)
        observer: ConnectionObserver = await enter_audit_observer(stack, settings, audit_log)
        servers: list[ProxyServer] = []  # the one server, once started, for /readyz
        admin = None
        if measured is not None and admin_socket is not None:
            observer = Observers(observer, MetricsObserver(measured))
            admin = await enter_admin(
                stack, engine, admin_socket, measured, audit_log, authenticator, servers
            )
        access = await enter_access(
            stack,
            settings,
            engine,
            users,
            cached_users,
            (
                cached_users.invalidate
                if sharing is None
                else _both(cached_users.invalidate, sharing.store_changed)
            ),
        )
        if admin is not None:
            access.set_other_endpoints([(admin.bound.host, admin.bound.port)])
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
        server = await enter_proxy_server(
            stack, settings, authenticator, observer, listen_sockets, access
        )
        servers.append(server)
        log.info("serving with users from %s", redact_url(settings.database_url))
        yield server


async def enter_engine(
    stack: contextlib.AsyncExitStack, database_url: str, measured: metrics.Metrics | None = None
) -> AsyncEngine:
    """An engine on a schema that is current (SchemaOutOfDate otherwise), disposed last;
    its driver errors counted in ``measured``."""
    engine = create_engine(database_url)
    stack.push_async_callback(engine.dispose)
    if measured is not None:
        on_database_error(engine, measured.database_errors.inc)
    with database_errors():
        await migrate.ensure_current(engine)
    return engine


async def enter_authenticator(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    accounts: UserLookup,
    users: UserLookup,
    measured: metrics.Metrics | None = None,
) -> Authenticator:
    """The authenticator, reading ``accounts`` (a cache in front of ``users``, or ``users``),
    with its throttle, its verification thread pool and the batched last-login writes to
    ``users``; started (its dummy hash computed before the first client can time a
    rejection)."""
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
        accounts,
        executor,
        logins,
        throttle=throttle,
        max_concurrent=threads,
    )
    await authenticator.start()
    stack.callback(authenticator.close)
    return authenticator


async def enter_audit_log(
    stack: contextlib.AsyncExitStack, settings: Settings, engine: AsyncEngine
) -> AuditLog:
    """This node's audit writer (its spill file replayed, a crashed predecessor's rows
    closed). Entered before the server, so it is flushed after the server has stopped and
    every client's entry is in."""
    return await stack.enter_async_context(
        AuditLog(
            SqlAuditStore(engine),
            node=settings.node_name,
            spill_path=settings.audit_spill_path
            or default_audit_spill_path(settings.database_url, settings.node_name),
        )
    )


async def enter_audit_observer(
    stack: contextlib.AsyncExitStack, settings: Settings, audit_log: AuditLog
) -> AuditObserver:
    """What turns the server's connections into ``audit_log``'s entries, with its task
    writing long tunnels' interim counts."""
    observer = AuditObserver(audit_log, settings.node_name)
    if settings.audit_interim_seconds is not None:
        await _enter_task(
            stack, observer.run_interim(settings.audit_interim_seconds), "audit-interim"
        )
    return observer


async def enter_admin(
    stack: contextlib.AsyncExitStack,
    engine: AsyncEngine,
    admin_socket: socket.socket,
    measured: metrics.Metrics,
    audit_log: AuditLog,
    authenticator: Authenticator,
    servers: Sequence[ProxyServer],
) -> AdminListener:
    """The admin listener on ``admin_socket``: metrics, readiness (of ``servers``' one
    server, once it is there) and the dashboard."""
    needed = migrate.head()

    async def readiness() -> str | None:
        if not servers or not servers[0].listening:
            return "the proxy is not listening"
        problem = await migrate.readiness_problem(engine, needed, READY_DATABASE_TIMEOUT_SECONDS)
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
    return await _enter_admin_listener(
        stack,
        admin_socket,
        measured,
        AuditSampler(measured, audit_log),
        readiness,
        dashboard,
    )


async def enter_access(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    engine: AsyncEngine,
    users: SqlUserStore,
    cached_users: UserCache,
    on_users_changed: Callable[[], None],
) -> Access:
    """The policy, limits and bandwidth the server applies, on the change feed and the shared
    connection leases, current when returned (revision, rules, egress addresses)."""
    changes = SqlChangeFeed(engine)
    stack.push_async_callback(changes.close)
    with database_errors():
        leases = await stack.enter_async_context(SqlConnectionLeases(engine, settings.node_name))
    access = Access(
        settings,
        rules=SqlRuleStore(engine),
        users=users,
        changes=changes,
        on_users_changed=on_users_changed,
        leases=leases,
        usage=SqlTrafficUsage(engine),
        egress_source=users,
        kills=SqlSessionStore(engine),
    )
    # The next login after a change committed anywhere is decided on the new state.
    cached_users.before_lookup = access.ensure_current
    with database_errors():
        # The revision first: a change made after it was read is one the watch sees.
        await access.check_changes()
        await access.load_rules()
        await access.check_egress()
    return access


async def enter_proxy_server(
    stack: contextlib.AsyncExitStack,
    settings: Settings,
    authenticator: Authenticator,
    observer: ConnectionObserver | None,
    listen_sockets: Sequence[socket.socket] = (),
    access: Access | None = None,
) -> ProxyServer:
    """The proxy, listening (and watching the accounts); entered last, so it stops first."""
    return await stack.enter_async_context(
        ProxyServer(settings, authenticator, observer, listen_sockets, access)
    )


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
    admin_socket: socket.socket,
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
