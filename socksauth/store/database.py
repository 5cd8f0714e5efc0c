"""Async engines for the supported databases (SQLite via aiosqlite, PostgreSQL via asyncpg)."""

from __future__ import annotations

import contextlib
import ipaddress
import os
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy.exc
from sqlalchemy import event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from socksauth.errors import ConfigError, DatabaseError

SQLITE_DRIVER = "sqlite+aiosqlite"
POSTGRESQL_DRIVER = "postgresql+asyncpg"
SUPPORTED_DRIVERS = (SQLITE_DRIVER, POSTGRESQL_DRIVER)

# WAL lets readers (the proxy) run while a writer (the CLI, the audit flush) commits;
# busy_timeout makes a locked database wait instead of failing at once; NORMAL is durable
# under WAL except for the last transactions on power loss, which is fine for login times.
SQLITE_PRAGMAS = (
    "PRAGMA journal_mode=WAL",
    "PRAGMA busy_timeout=5000",
    "PRAGMA foreign_keys=ON",
    "PRAGMA synchronous=NORMAL",
)


def redact_url(url: str | URL) -> str:
    """``url`` with its password replaced by ``***``, safe to log or print."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        # Unparseable, so we cannot tell where a password would be: show nothing of it.
        return "<unparseable database URL>"


def parse_url(url: str) -> URL:
    """The parsed URL; ConfigError unless it names one of the supported async drivers."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise ConfigError(
            "database URL is not a URL; expected sqlite+aiosqlite:///path "
            "or postgresql+asyncpg://user@host/dbname"
        ) from None
    if parsed.drivername not in SUPPORTED_DRIVERS:
        raise ConfigError(
            f"database URL scheme {parsed.drivername!r} is not supported; "
            f"use one of {', '.join(SUPPORTED_DRIVERS)}"
        )
    return parsed


# PostgreSQL connections the pool keeps open between uses. Opening one costs round trips and,
# with asyncpg's default sslmode "prefer", building an SSL context: 10-30 ms of CPU on the
# event loop, which stalls every tunnel of the process. SQLAlchemy's default (5, and up to 10
# more that are closed again after each burst) paid that at every burst of cold logins; the
# LISTEN connection of the change feed also holds one for good.
POSTGRESQL_POOL_SIZE = 12
POSTGRESQL_MAX_OVERFLOW = 8


def engine_options(parsed: URL) -> dict[str, Any]:
    """Keyword arguments for ``create_async_engine`` beyond the URL."""
    if parsed.drivername != POSTGRESQL_DRIVER:
        return {}
    options: dict[str, Any] = {
        "pool_size": POSTGRESQL_POOL_SIZE,
        "max_overflow": POSTGRESQL_MAX_OVERFLOW,
    }
    if not {"ssl", "sslmode"} & set(parsed.query) and _is_local(parsed.host):
        # SSL to a server on this machine protects nothing, and "prefer" builds an SSL
        # context for every new connection; ask with ?ssl=require (or sslmode=) to have it.
        options["connect_args"] = {"ssl": False}
    return options


def _is_local(host: str | None) -> bool:
    """A Unix socket (no host, or a directory), localhost, or a loopback address."""
    if not host or host.startswith("/") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def create_engine(url: str) -> AsyncEngine:
    """An async engine for ``url``; SQLite connections get socksauth's pragmas.

    Raises:
        ConfigError: the URL is malformed or names an unsupported scheme.
    """
    parsed = parse_url(url)
    engine = create_async_engine(parsed, **engine_options(parsed))
    if parsed.drivername == SQLITE_DRIVER:
        event.listen(engine.sync_engine, "connect", _set_sqlite_pragmas)
    return engine


def default_sqlite_url() -> str:
    """``$XDG_DATA_HOME/socksauth/socksauth.sqlite3`` as a URL, creating the directory.

    ``XDG_DATA_HOME`` defaults to ``~/.local/share`` (XDG Base Directory specification).
    """
    data_home = Path(os.environ.get("XDG_DATA_HOME") or "")
    # The specification says a relative XDG_DATA_HOME is invalid and must be ignored.
    if not data_home.is_absolute():
        data_home = Path.home() / ".local" / "share"
    directory = data_home / "socksauth"
    # Owner-only: the file holds password hashes.
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return f"{SQLITE_DRIVER}:///{directory / 'socksauth.sqlite3'}"


def default_audit_spill_path(url: str, node: str) -> Path:
    """Where audit entries wait while the database is unreachable: next to a SQLite file
    (``DB.audit-spill-NODE.jsonl``), else ``$XDG_STATE_HOME/socksauth/audit-spill-NODE.jsonl``
    (default ``~/.local/state``).
    """
    # One file per node: worker processes are nodes of their own, and two processes must not
    # replay (rename) the same file.
    safe_node = "".join(c if c.isalnum() or c in "-_." else "_" for c in node)
    parsed = parse_url(url)
    if parsed.drivername == SQLITE_DRIVER and parsed.database not in (None, "", ":memory:"):
        database = Path(parsed.database or "")
        return database.with_name(f"{database.name}.audit-spill-{safe_node}.jsonl")
    state_home = Path(os.environ.get("XDG_STATE_HOME") or "")
    if not state_home.is_absolute():
        state_home = Path.home() / ".local" / "state"
    return state_home / "socksauth" / f"audit-spill-{safe_node}.jsonl"


def _set_sqlite_pragmas(dbapi_connection: Any, connection_record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        for pragma in SQLITE_PRAGMAS:
            cursor.execute(pragma)
    finally:
        cursor.close()


@contextlib.contextmanager
def database_errors() -> Iterator[None]:
    """Turn driver and connection errors into DatabaseError with a one-line, URL-free message."""
    try:
        yield
    except sqlalchemy.exc.DBAPIError as error:
        # The driver's own message (e.g. 'database "x" does not exist'); it never carries the
        # URL, unlike SQLAlchemy's rendering which appends the statement and a link.
        lines = str(error.orig).strip().splitlines()
        reason = lines[0] if lines else type(error.orig).__name__
        raise DatabaseError(f"database: {reason}") from None
    except sqlalchemy.exc.TimeoutError:
        # The pool had no connection to lend within its timeout (every one busy or dead).
        raise DatabaseError("database: no connection free in the pool in time") from None
    except OSError as error:
        raise DatabaseError(f"database: {error.strerror or error}") from None


def on_database_error(engine: AsyncEngine, callback: Callable[[], None]) -> None:
    """Call ``callback`` for every error the database (or connecting to it) raises through
    ``engine``, wherever it is caught: one hook instead of one count per caller."""

    def handle_error(context: sqlalchemy.engine.ExceptionContext) -> None:
        callback()

    event.listen(engine.sync_engine, "handle_error", handle_error)


@contextlib.asynccontextmanager
async def connected(url: str) -> AsyncIterator[AsyncEngine]:
    """An engine for one command: its errors become DatabaseError, and it is disposed after."""
    engine = create_engine(url)
    try:
        with database_errors():
            yield engine
    finally:
        await engine.dispose()
