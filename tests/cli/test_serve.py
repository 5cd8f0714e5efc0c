"""`socksauth serve` as a real process, on SQLite and PostgreSQL: it serves until SIGTERM,
refuses a database that is not migrated, reports bad settings in one line, and never prints a
password (a user's or the database URL's)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cli_runner import (
    SOCKSAUTH,
    SUBPROCESS_SECONDS,
    cli_process,
    one_error_line,
    subprocess_environment,
)
from e2e import (
    ALICE,
    ALICE_PASSWORD,
    BOB,
    EchoServer,
    assert_serves_a_good_client,
    credentials,
    greeting,
    raw_connection,
    read_exactly,
    read_until_closed,
)
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.store.interfaces import NewRule
from socksauth.store.rules import SqlRuleStore
from socksauth.store.users import SqlUserStore

SECRET = "SuperSecret123"
LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


def with_password(database_url: str) -> str:
    """The URL with a password in it. The test PostgreSQL trusts local connections, so the
    password is ignored by the server but still part of what socksauth must never print."""
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        return database_url
    return url.set(password=SECRET).render_as_string(hide_password=False)


@dataclass
class ServeProcess:
    process: asyncio.subprocess.Process
    port: int = 0
    stderr: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def serving(*args: str) -> AsyncIterator[ServeProcess]:
    """`socksauth serve --listen 127.0.0.1:0 ARGS`, once it logged its port; SIGTERM at the end."""
    process = await asyncio.create_subprocess_exec(
        SOCKSAUTH, "serve", "--listen", "127.0.0.1:0", *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=subprocess_environment(),
    )  # fmt: skip
    assert process.stderr is not None
    serve = ServeProcess(process)
    listening = asyncio.get_running_loop().create_future()

    async def collect_stderr() -> None:
        assert process.stderr is not None
        while line := await process.stderr.readline():
            serve.stderr.append(line.decode())
            match = LISTENING.search(serve.stderr[-1])
            if match and not listening.done():
                listening.set_result(int(match.group(1)))
        if not listening.done():
            listening.set_exception(AssertionError("serve exited:\n" + "".join(serve.stderr)))

    collector = asyncio.create_task(collect_stderr())
    try:
        async with asyncio.timeout(SUBPROCESS_SECONDS):
            serve.port = await listening
        yield serve
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(SUBPROCESS_SECONDS):
                await process.wait()
                await collector
        except TimeoutError:
            process.kill()
            await process.wait()
            raise


async def test_serve_proxies_for_database_users_and_exits_0_on_sigterm(
    database_url: str,
    engine: AsyncEngine,
    user_store: SqlUserStore,
    echo_server: EchoServer,
) -> None:
    # Loopback targets are protected by the destination policy unless a rule allows them.
    rules = SqlRuleStore(engine)
    for cidr in ("127.0.0.0/8", "::1/128"):
        await rules.add_rule(NewRule(action="allow", cidr=cidr), position=1)
    url = with_password(database_url)
    async with serving("--database-url", url) as serve:
        for _ in range(3):
            await assert_serves_a_good_client(serve.port, echo_server)
        async with raw_connection(serve.port) as (reader, writer):
            writer.write(greeting(2) + credentials(BOB, ALICE_PASSWORD))
            assert await read_until_closed(reader) == b"\x05\x02\x01\x01"
    assert serve.process.returncode == 0, "".join(serve.stderr)
    log = "".join(serve.stderr)
    assert f"user={ALICE}" in log
    assert f"user={BOB}" in log
    assert ALICE_PASSWORD not in log
    assert SECRET not in log


async def test_serve_on_an_unmigrated_database_exits_1_naming_db_upgrade(
    database_url: str, unmigrated_engine: AsyncEngine
) -> None:
    result = await cli_process("serve", "--listen", "127.0.0.1:0", "--database-url", database_url)
    assert result.returncode == 1
    assert "`socksauth db upgrade`" in one_error_line(result.stderr)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param(["--listen", "nonsense:xx"], "'xx' is not a number", id="listen-port"),
        pytest.param(["--listen", "::1:1080"], "[ADDRESS]:PORT", id="listen-bare-ipv6"),
        pytest.param(["--listen", "127.0.0.1:70000"], "out of range", id="listen-range"),
        pytest.param(["--trusted-network", "10.0.0.0/33"], "CIDR", id="trusted-network"),
        pytest.param(
            ["--database-url", f"mysql://u:{SECRET}@127.0.0.1:1/x"],
            "scheme 'mysql' is not supported",
            id="database-scheme",
        ),
    ],
)
async def test_serve_with_a_bad_setting_exits_2_with_one_line(
    args: list[str], message: str
) -> None:
    result = await cli_process("serve", *args)
    assert result.returncode == 2
    assert message in one_error_line(result.stderr)
    assert SECRET not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        # A name that is not even a valid DNS name: refused without asking any resolver.
        pytest.param(
            ["--listen", "no..such..host"],
            "listen: cannot resolve 'no..such..host'",
            id="listen-name",
        ),
        pytest.param(
            ["--listen", "127.0.0.1:0", "--admin-listen", "no..such..host:9180"],
            "admin_listen: cannot resolve 'no..such..host'",
            id="admin-listen-name",
        ),
    ],
)
async def test_serve_with_a_listen_address_that_does_not_resolve_exits_2_naming_it(
    args: list[str], message: str, tmp_path: Path
) -> None:
    # A database that does not exist yet: the address is refused before anything starts.
    url = f"sqlite+aiosqlite:///{tmp_path / 'never-created.sqlite3'}"
    result = await cli_process("serve", "--database-url", url, *args)
    assert result.returncode == 2, result.stderr
    line = one_error_line(result.stderr)
    assert message in line
    assert "expected HOST:PORT, [IPv6]:PORT or :PORT" in line
    assert not (tmp_path / "never-created.sqlite3").exists()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize(
    ("option", "workers", "setting"),
    [
        pytest.param("--listen", "1", "listen", id="listen"),
        pytest.param("--listen", "2", "listen", id="listen-workers"),
        pytest.param("--admin-listen", "1", "admin_listen", id="admin-listen"),
    ],
)
async def test_serve_on_a_port_in_use_exits_1_with_one_line_naming_the_address(
    database_url: str, engine: AsyncEngine, option: str, workers: str, setting: str
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["--listen", "127.0.0.1:0", option, f"127.0.0.1:{port}"]
        if option == "--listen":
            args = args[2:]
        result = await cli_process(
            "serve", "--database-url", database_url, "--workers", workers, *args
        )
    assert result.returncode == 1, result.stderr
    assert one_error_line(result.stderr) == (
        f"Error: {setting}: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


async def test_serve_with_an_unreachable_database_exits_1_without_its_password() -> None:
    result = await cli_process(
        "serve", "--listen", "127.0.0.1:0",
        "--database-url", f"postgresql+asyncpg://u:{SECRET}@127.0.0.1:1/x",
    )  # fmt: skip
    assert result.returncode == 1
    assert "Connection refused" in one_error_line(result.stderr)
    assert SECRET not in result.stdout + result.stderr


async def test_a_target_that_speaks_first_loses_no_byte(
    database_url: str, engine: AsyncEngine, user_store: SqlUserStore
) -> None:
    # uvloop (what `serve` runs on) delivers a target's first bytes as soon as the outbound
    # connection exists, before the client has its reply: SSH and SMTP servers speak first.
    banner = bytes(range(256)) * 500

    async def speak_first(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(banner)
        await writer.drain()
        writer.close()

    target = await asyncio.start_server(speak_first, "127.0.0.1", 0)
    await SqlRuleStore(engine).add_rule(NewRule(action="allow", cidr="127.0.0.0/8"), position=1)
    async with target, serving("--database-url", database_url, "--workers", "1") as serve:
        for _ in range(3):
            async with raw_connection(serve.port) as (reader, writer):
                port = target.sockets[0].getsockname()[1]
                writer.write(
                    greeting(2)
                    + credentials(ALICE, ALICE_PASSWORD)
                    + b"\x05\x01\x00\x01\x7f\x00\x00\x01"
                    + port.to_bytes(2, "big")
                )
                received = await read_until_closed(reader)
                # method selection, auth status, success reply with an IPv4 address: 14 bytes
                assert received[:5] == b"\x05\x02\x01\x00\x05" and received[5] == 0
                assert received[14:] == banner, "".join(serve.stderr)
    assert "AssertionError" not in "".join(serve.stderr), "".join(serve.stderr)


async def test_serve_reads_a_load_balancers_proxy_header_before_the_greeting(
    database_url: str, user_store: SqlUserStore
) -> None:
    # On uvloop (what `serve` runs on) the first bytes may arrive before the client task
    # runs: they must still be taken as the header, not as the SOCKS greeting.
    header = b"PROXY TCP4 203.0.113.7 127.0.0.1 40123 1080\r\n"
    async with serving(
        "--database-url", database_url, "--workers", "1", "--proxy-protocol-from", "127.0.0.1/32"
    ) as serve:
        for first_write in (header + greeting(2), header):
            async with raw_connection(serve.port) as (reader, writer):
                writer.write(first_write)
                if first_write == header:
                    await writer.drain()
                    writer.write(greeting(2))
                writer.write(credentials(ALICE, ALICE_PASSWORD))
                assert await read_exactly(reader, 4) == b"\x05\x02\x01\x00"
    log = "".join(serve.stderr)
    assert log.count("203.0.113.7:40123 user=alice") == 2, log
