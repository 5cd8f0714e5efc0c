"""Engines: supported URL schemes, SQLite pragmas, redaction, the default SQLite location."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from sqlalchemy import text

from socksauth.errors import ConfigError
from socksauth.store.database import (
    create_engine,
    default_sqlite_url,
    engine_options,
    parse_url,
    redact_url,
)


@pytest.mark.parametrize(
    ("url", "scheme"),
    [
        ("mysql+aiomysql://root:hunter2@db/socksauth", "mysql+aiomysql"),
        ("postgresql://app:hunter2@db/socksauth", "postgresql"),
        ("postgresql+psycopg2://app:hunter2@db/socksauth", "postgresql+psycopg2"),
        ("sqlite:///plain-sync.sqlite3", "sqlite"),
    ],
)
def test_unsupported_schemes_are_a_config_error_naming_the_scheme(url: str, scheme: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(repr(scheme))) as caught:
        create_engine(url)
    assert "hunter2" not in str(caught.value)


def test_a_malformed_url_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="not a URL"):
        create_engine("not a url at all")


def test_redact_url_hides_the_password() -> None:
    redacted = redact_url("postgresql+asyncpg://app:hunter2@db:5432/socksauth")
    assert "hunter2" not in redacted
    assert redacted == "postgresql+asyncpg://app:***@db:5432/socksauth"


def test_redact_url_of_garbage_shows_nothing_of_it() -> None:
    assert "hunter2" not in redact_url("::hunter2::")


async def test_sqlite_connections_get_the_pragmas(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'p.sqlite3'}")
    try:
        async with engine.connect() as conn:
            values = {
                pragma: (await conn.execute(text(f"PRAGMA {pragma}"))).scalar_one()
                for pragma in ("journal_mode", "busy_timeout", "foreign_keys", "synchronous")
            }
    finally:
        await engine.dispose()
    # synchronous: 1 is NORMAL.
    assert values == {"journal_mode": "wal", "busy_timeout": 5000, "foreign_keys": 1,
                      "synchronous": 1}  # fmt: skip


def test_default_sqlite_url_is_under_xdg_data_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    url = default_sqlite_url()
    assert url == f"sqlite+aiosqlite:///{tmp_path / 'data' / 'socksauth' / 'socksauth.sqlite3'}"
    assert (tmp_path / "data" / "socksauth").is_dir()


@pytest.mark.parametrize("xdg_data_home", ["", "relative/dir"])
def test_default_sqlite_url_falls_back_to_local_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, xdg_data_home: str
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("XDG_DATA_HOME", xdg_data_home)
    url = default_sqlite_url()
    expected = tmp_path / ".local" / "share" / "socksauth" / "socksauth.sqlite3"
    assert url == f"sqlite+aiosqlite:///{expected}"
    assert expected.parent.is_dir()


@pytest.mark.parametrize(
    ("url", "ssl_off"),
    [
        ("postgresql+asyncpg://postgres@127.0.0.1:5432/db", True),
        ("postgresql+asyncpg://postgres@localhost/db", True),
        ("postgresql+asyncpg://postgres@[::1]:5432/db", True),
        ("postgresql+asyncpg://postgres@/db?host=/run/postgresql", True),
        ("postgresql+asyncpg://postgres@127.0.0.1/db?ssl=require", False),
        ("postgresql+asyncpg://postgres@db.internal.example/db", False),
    ],
)
def test_postgresql_keeps_a_pool_and_skips_ssl_negotiation_only_on_this_machine(
    url: str, ssl_off: bool
) -> None:
    options = engine_options(parse_url(url))
    assert options["pool_size"] >= 10
    assert (options.get("connect_args") == {"ssl": False}) is ssl_off


def test_sqlite_engines_take_sqlalchemys_defaults() -> None:
    assert engine_options(parse_url("sqlite+aiosqlite:///x.sqlite3")) == {}
