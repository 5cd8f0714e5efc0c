"""Graceful shutdown and SIGHUP reload: in-process through `app.serve` and `app.reload_server`,
and as real `socksauth serve` processes with one and with two workers, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from e2e import (
    WAIT_SECONDS,
    EchoServer,
    allow_loopback_targets,
    assert_serves_a_good_client,
    credentials,
    eventually,
    greeting,
    open_tunnel,
    read_exactly,
    read_reply,
    read_until_closed,
    request,
    with_timeout,
    worker_pids,
)

from socksauth import app
from socksauth.config import ListenAddress, Settings
from socksauth.errors import ConfigError
from socksauth.logs import LOGGER_NAME
from socksauth.server.listener import ProxyServer
from socksauth.store.audit import SqlAuditStore
from socksauth.store.database import create_engine
from socksauth.store.interfaces import AuditEntry, AuditQuery
from socksauth.store.users import SqlUserStore

pytestmark = pytest.mark.timeout(90)

LISTENING = re.compile(r"listening on 127\.0\.0\.1:(\d+)")


# --- helpers ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def refuses(port: int) -> bool:
    """Whether a connection to ``port`` is refused (nobody listens there any more)."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    return False


async def until_refused(port: int) -> None:
    async with asyncio.timeout(WAIT_SECONDS):
        while not await refuses(port):
            await asyncio.sleep(0.02)


async def round_trip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"ping")
    assert await read_exactly(reader, 4) == b"ping"


async def close_cleanly(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The client's FIN; the echo target finishes and the proxy passes its FIN back."""
    writer.write_eof()
    assert await read_until_closed(reader) == b""
    writer.close()


async def ended_by_server(reader: asyncio.StreamReader) -> None:
    """The proxy ends the tunnel (FIN or reset), without any byte."""
    with contextlib.suppress(ConnectionError):
        assert await read_until_closed(reader) == b""


async def audit_entries(database_url: str) -> list[AuditEntry]:
    engine = create_engine(database_url)
    try:
        return list(await SqlAuditStore(engine).find_entries(AuditQuery(limit=None)))
    finally:
        await engine.dispose()


async def tunnel_outcomes(database_url: str) -> list[str | None]:
    return [entry.outcome for entry in await audit_entries(database_url) if entry.command]


@pytest.fixture
def proxy_logs() -> Iterator[None]:
    """A reload reconfigures the socksauth logger (level, handler); put it back afterwards."""
    logger = logging.getLogger(LOGGER_NAME)
    saved = (logger.handlers[:], logger.level, logger.propagate)
    logger.propagate = True
    try:
        yield
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved


# --- in process: app.serve with a shutdown trigger ----------------------------------------------


@dataclass
class Serving:
    server: ProxyServer
    stop: asyncio.Event
    task: asyncio.Task[None]

    @property
    def port(self) -> int:
        return self.server.bound[0].port


@contextlib.asynccontextmanager
async def serving(database_url: str, **overrides: Any) -> AsyncIterator[Serving]:
    await allow_loopback_targets(database_url)
    settings = Settings(
        database_url=database_url,
        listen=(ListenAddress(host="127.0.0.1", port=0),),
        **overrides,
    )
    ready: asyncio.Future[ProxyServer] = asyncio.get_running_loop().create_future()
    stop = asyncio.Event()
    task = asyncio.create_task(
        app.serve(settings, on_ready=ready.set_result, shutdown_trigger=stop)
    )
    try:
        await with_timeout(asyncio.wait([ready, task], return_when=asyncio.FIRST_COMPLETED))
        if task.done():
            task.result()  # raises why it did not start
        yield Serving(ready.result(), stop, task)
    finally:
        stop.set()
        await with_timeout(asyncio.wait([task]))


async def test_a_stop_refuses_new_clients_and_waits_for_open_tunnels_to_end(
    database_url: str,
    user_store: SqlUserStore,
    echo_server: EchoServer,
) -> None:
    async with serving(database_url, shutdown_grace_seconds=30.0) as running:
        reader, writer, reply = await open_tunnel(running.port, echo_server.host, echo_server.port)
        assert reply.reply == 0x00
        running.stop.set()
        await until_refused(running.port)
        # During the grace period the tunnel relays as before, and the server waits for it.
        await round_trip(reader, writer)
        assert not running.task.done()
        await close_cleanly(reader, writer)
        # Well before the 30 s of grace: the last tunnel ended, so the stop is complete.
        await with_timeout(running.task, 5.0)
    assert await tunnel_outcomes(database_url) == ["closed"]


async def test_tunnels_still_open_when_the_grace_period_ends_are_closed_and_audited(
    database_url: str,
    user_store: SqlUserStore,
    echo_server: EchoServer,
) -> None:
    async with serving(database_url, shutdown_grace_seconds=0.5) as running:
        reader, writer, reply = await open_tunnel(running.port, echo_server.host, echo_server.port)
        assert reply.reply == 0x00
        await round_trip(reader, writer)
        running.stop.set()
        await ended_by_server(reader)
        await with_timeout(running.task)
        writer.close()
    # serve() returned after the audit was flushed: the row is complete.
    (entry,) = [entry for entry in await audit_entries(database_url) if entry.command]
    assert (entry.outcome, entry.bytes_from_client, entry.bytes_to_client) == ("shutdown", 4, 4)
    assert entry.ended_at is not None


async def test_a_client_in_the_handshake_finishes_it_and_its_tunnel_gets_the_grace_period(
    database_url: str,
    user_store: SqlUserStore,
    echo_server: EchoServer,
) -> None:
    async with serving(database_url, shutdown_grace_seconds=30.0) as running:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(greeting(0x02))
        assert await read_exactly(reader, 2) == b"\x05\x02"
        assert running.server.in_handshake == 1
        running.stop.set()
        await until_refused(running.port)
        writer.write(credentials("alice", "alice-Secret-8d1f"))
        assert await read_exactly(reader, 2) == b"\x01\x00"
        writer.write(request(echo_server.host, echo_server.port))
        assert (await read_reply(reader)).reply == 0x00
        await round_trip(reader, writer)
        assert not running.task.done()
        await close_cleanly(reader, writer)
        await with_timeout(running.task, 5.0)
    assert await tunnel_outcomes(database_url) == ["closed"]


async def test_a_handshake_under_way_is_finished_even_without_a_grace_period(
    database_url: str,
    user_store: SqlUserStore,
    echo_server: EchoServer,
) -> None:
    async with serving(database_url, shutdown_grace_seconds=0.0) as running:
        reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
        writer.write(greeting(0x02))
        assert await read_exactly(reader, 2) == b"\x05\x02"
        running.stop.set()
        await until_refused(running.port)
        writer.write(credentials("alice", "alice-Secret-8d1f"))
        assert await read_exactly(reader, 2) == b"\x01\x00"
        writer.write(request(echo_server.host, echo_server.port))
        # The reply comes; then the tunnel, with no grace to get, is closed.
        assert (await read_reply(reader)).reply == 0x00
        await ended_by_server(reader)
        writer.close()
        await with_timeout(running.task)
    assert await tunnel_outcomes(database_url) == ["shutdown"]


# --- in process: app.reload_server ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def running(database_url: str, **overrides: Any) -> AsyncIterator[ProxyServer]:
    await allow_loopback_targets(database_url)
    settings = Settings(
        database_url=database_url,
        listen=(ListenAddress(host="127.0.0.1", port=0),),
        **overrides,
    )
    async with app.running_server(settings) as server:
        yield server


@pytest.mark.usefixtures("proxy_logs")
async def test_a_reload_opens_and_closes_listeners_while_an_established_tunnel_relays(
    database_url: str,
    user_store: SqlUserStore,
    echo_server: EchoServer,
) -> None:
    async with running(database_url) as server:
        old_port = server.bound[0].port
        reader, writer, reply = await open_tunnel(old_port, echo_server.host, echo_server.port)
        assert reply.reply == 0x00
        new_port = free_port()
        moved = replace(server.settings, listen=(ListenAddress(host="127.0.0.1", port=new_port),))

        assert await app.reload_server(server, lambda: moved)

        assert [bound.port for bound in server.bound] == [new_port]
        assert await refuses(old_port)
        await assert_serves_a_good_client(new_port, echo_server)
        # The tunnel accepted on the closed listener is untouched.
        await round_trip(reader, writer)
        await close_cleanly(reader, writer)


@pytest.mark.usefixtures("proxy_logs")
async def test_a_reload_applies_limits_and_the_log_level_to_the_next_clients(
    database_url: str,
    user_store: SqlUserStore,
    echo_server: EchoServer,
) -> None:
    async with running(database_url) as server:
        port = server.bound[0].port
        reader, writer, reply = await open_tunnel(port, echo_server.host, echo_server.port)
        assert reply.reply == 0x00
        stricter = replace(server.settings, max_connections=1, log_level="DEBUG")

        assert await app.reload_server(server, lambda: stricter)

        assert logging.getLogger(LOGGER_NAME).level == logging.DEBUG
        # The open tunnel counts against the new cap: the next client is closed unanswered.
        async with asyncio.timeout(WAIT_SECONDS):
            refused_reader, refused_writer = await asyncio.open_connection("127.0.0.1", port)
        refused_writer.write(greeting(0x02))
        await ended_by_server(refused_reader)
        refused_writer.close()
        await round_trip(reader, writer)
        await close_cleanly(reader, writer)
        await eventually(lambda: server.active_clients == 0, what="the tunnel to end")
        await assert_serves_a_good_client(port, echo_server)


@pytest.mark.usefixtures("proxy_logs")
async def test_an_invalid_reload_keeps_the_settings_in_force(
    database_url: str,
    user_store: SqlUserStore,
    echo_server: EchoServer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running(database_url) as server:
        before, bound = server.settings, list(server.bound)

        def broken() -> Settings:
            raise ConfigError("socksauth.toml: listen: 'nowhere:x' is not a port")

        assert not await app.reload_server(server, broken)
        assert "reload failed, the settings in force stay: socksauth.toml" in caplog.text

        # An address someone else listens on: nothing changes, not even the other listener.
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            busy = ListenAddress(host="127.0.0.1", port=taken.getsockname()[1])
            both = replace(before, listen=(*before.listen, busy), max_connections=1)
            assert not await app.reload_server(server, lambda: both)

        assert server.settings is before
        assert server.bound == bound
        await assert_serves_a_good_client(bound[0].port, echo_server)


@pytest.mark.usefixtures("proxy_logs")
async def test_settings_that_need_a_restart_are_kept_and_named(
    database_url: str,
    user_store: SqlUserStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with running(database_url, node_name="node-a") as server:
        renamed = replace(
            server.settings, node_name="node-b", database_url="sqlite+aiosqlite:///elsewhere"
        )
        assert await app.reload_server(server, lambda: renamed)
        assert (server.settings.node_name, server.settings.database_url) == (
            "node-a",
            database_url,
        )
        assert "reload: database_url changed; it applies after a restart" in caplog.text
        assert "reload: node_name changed; it applies after a restart" in caplog.text
        assert "elsewhere" not in caplog.text


# --- real processes: `socksauth serve` with one and two workers -----------------------------------


@dataclass
class ServeProcess:
    process: asyncio.subprocess.Process
    port: int = 0
    lines: list[str] = field(default_factory=list)
    new_line: asyncio.Event = field(default_factory=asyncio.Event)
    stderr_closed: bool = False

    async def wait_for_line(self, pattern: str, start: int = 0, count: int = 1) -> re.Match[str]:
        """The ``count``-th line from index ``start`` on that matches ``pattern``."""
        async with asyncio.timeout(WAIT_SECONDS * 2):
            while True:
                matches = [m for line in self.lines[start:] if (m := re.search(pattern, line))]
                if len(matches) >= count:
                    return matches[count - 1]
                if self.stderr_closed:
                    raise AssertionError(f"exited without logging {pattern!r}")
                self.new_line.clear()
                await self.new_line.wait()

    def signal(self, signum: signal.Signals) -> None:
        self.process.send_signal(signum)

    async def exit_code(self, seconds: float = WAIT_SECONDS) -> int:
        async with asyncio.timeout(seconds):
            return await self.process.wait()


@contextlib.asynccontextmanager
async def serve_process(database_url: str, workers: int, *args: str) -> AsyncIterator[ServeProcess]:
    """`socksauth serve --workers N ARGS`, once it logged its port; killed if still running."""
    await allow_loopback_targets(database_url)
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SOCKSAUTH_")}
    environment["SOCKSAUTH_DATABASE_URL"] = database_url
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "socksauth", "serve", "--workers", str(workers), *args,
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=environment,
    )  # fmt: skip
    serve = ServeProcess(process)

    async def collect() -> None:
        assert process.stderr is not None
        while line := await process.stderr.readline():
            serve.lines.append(line.decode())
            serve.new_line.set()
        serve.stderr_closed = True
        serve.new_line.set()

    collector = asyncio.create_task(collect())
    try:
        serve.port = int((await serve.wait_for_line(LISTENING.pattern)).group(1))
        yield serve
    finally:
        if process.returncode is None:
            # Its workers first: a killed supervisor's workers would keep serving.
            for pid in worker_pids(process.pid):
                os.kill(pid, signal.SIGKILL)
            process.kill()
            await process.wait()
        await with_timeout(collector)
        for line in serve.lines:
            if "Traceback" in line:
                raise AssertionError("".join(serve.lines))


WORKERS = pytest.mark.parametrize("workers", [1, 2], ids=["one-process", "two-workers"])


@WORKERS
async def test_sigterm_waits_for_an_open_tunnel_then_exits_0_with_the_audit_written(
    database_url: str,
    user_store: SqlUserStore,
    echo_server: EchoServer,
    workers: int,
) -> None:
    async with serve_process(
        database_url, workers, "--listen", "127.0.0.1:0", "--shutdown-grace", "30"
    ) as serve:
        reader, writer, reply = await open_tunnel(serve.port, echo_server.host, echo_server.port)
        assert reply.reply == 0x00
        serve.signal(signal.SIGTERM)
        await serve.wait_for_line(r"1 connection\(s\) open; they have 30\.0 s to end")
        await until_refused(serve.port)
        await round_trip(reader, writer)
        assert serve.process.returncode is None
        await close_cleanly(reader, writer)
        assert await serve.exit_code() == 0
        await serve.wait_for_line(r"stopped in \d+\.\d+ s; 0 connection\(s\) closed")
    assert await tunnel_outcomes(database_url) == ["closed"]


@WORKERS
async def test_tunnels_open_at_the_end_of_the_grace_period_are_closed_as_shutdown(
    database_url: str,
    user_store: SqlUserStore,
    echo_server: EchoServer,
    workers: int,
) -> None:
    async with serve_process(
        database_url, workers, "--listen", "127.0.0.1:0", "--shutdown-grace", "1"
    ) as serve:
        reader, writer, reply = await open_tunnel(serve.port, echo_server.host, echo_server.port)
        assert reply.reply == 0x00
        await round_trip(reader, writer)
        serve.signal(signal.SIGTERM)
        await ended_by_server(reader)
        writer.close()
        assert await serve.exit_code() == 0
        await serve.wait_for_line(r"stopped in \d+\.\d+ s; 1 connection\(s\) closed")
    assert await tunnel_outcomes(database_url) == ["shutdown"]


@WORKERS
async def test_a_second_signal_closes_every_connection_at_once(
    database_url: str,
    user_store: SqlUserStore,
    echo_server: EchoServer,
    workers: int,
) -> None:
    async with serve_process(
        database_url, workers, "--listen", "127.0.0.1:0", "--shutdown-grace", "60"
    ) as serve:
        reader, writer, reply = await open_tunnel(serve.port, echo_server.host, echo_server.port)
        assert reply.reply == 0x00
        # Ctrl-C, then SIGTERM: either signal counts, in either order.
        serve.signal(signal.SIGINT)
        await serve.wait_for_line(r"they have 60\.0 s to end")
        await round_trip(reader, writer)
        serve.signal(signal.SIGTERM)
        await ended_by_server(reader)
        writer.close()
        # Far below the 60 s of grace.
        assert await serve.exit_code() == 0
        await serve.wait_for_line("closing every connection now")
    assert await tunnel_outcomes(database_url) == ["shutdown"]


@WORKERS
async def test_sighup_applies_a_changed_config_file_while_a_tunnel_keeps_relaying(
    database_url: str,
    user_store: SqlUserStore,
    echo_server: EchoServer,
    workers: int,
    tmp_path: Path,
) -> None:
    config = tmp_path / "socksauth.toml"
    config.write_text('listen = ["127.0.0.1:0"]\nlog_level = "INFO"\n')
    async with serve_process(database_url, workers, "--config", str(config)) as serve:
        reader, writer, reply = await open_tunnel(serve.port, echo_server.host, echo_server.port)
        assert reply.reply == 0x00
        added = free_port()
        config.write_text(f'listen = ["127.0.0.1:0", "127.0.0.1:{added}"]\nlog_level = "DEBUG"\n')
        mark = len(serve.lines)
        serve.signal(signal.SIGHUP)
        # Every worker reloads itself (and binds the new address with SO_REUSEPORT).
        await serve.wait_for_line(r"app: reloaded", mark, count=workers)
        await assert_serves_a_good_client(added, echo_server)
        await assert_serves_a_good_client(serve.port, echo_server)
        await round_trip(reader, writer)

        config.write_text("listen = [\n")  # not TOML
        mark = len(serve.lines)
        serve.signal(signal.SIGHUP)
        await serve.wait_for_line(r"reload failed, the settings in force stay", mark)
        await round_trip(reader, writer)
        for port in (serve.port, added):
            await assert_serves_a_good_client(port, echo_server)
        await close_cleanly(reader, writer)
        serve.signal(signal.SIGTERM)
        assert await serve.exit_code() == 0


async def test_sigquit_to_one_process_closes_every_connection_at_once(
    database_url: str,
    user_store: SqlUserStore,
    echo_server: EchoServer,
) -> None:
    async with serve_process(
        database_url, 1, "--listen", "127.0.0.1:0", "--shutdown-grace", "60"
    ) as serve:
        reader, writer, reply = await open_tunnel(serve.port, echo_server.host, echo_server.port)
        assert reply.reply == 0x00
        serve.signal(signal.SIGQUIT)
        await ended_by_server(reader)
        writer.close()
        assert await serve.exit_code() == 0
    assert await tunnel_outcomes(database_url) == ["shutdown"]


async def test_a_worker_restarted_after_a_reload_reloads_too(
    database_url: str,
    user_store: SqlUserStore,
    echo_server: EchoServer,
    tmp_path: Path,
) -> None:
    config = tmp_path / "socksauth.toml"
    config.write_text('listen = ["127.0.0.1:0"]\n')
    # No crash-loop guard: the supervisor restarts the worker however soon it is killed.
    async with serve_process(
        database_url, 2, "--config", str(config), "--worker-min-uptime", "0"
    ) as serve:
        added = free_port()
        config.write_text(f'listen = ["127.0.0.1:0", "127.0.0.1:{added}"]\n')
        mark = len(serve.lines)
        serve.signal(signal.SIGHUP)
        await serve.wait_for_line(r"app: reloaded", mark, count=2)
        workers = worker_pids(serve.process.pid)
        assert len(workers) == 2
        os.kill(min(workers), signal.SIGKILL)
        await serve.wait_for_line(r"restarting it", mark)
        # The replacement was forked with the first settings; it reloads once it has started.
        await serve.wait_for_line(r"app: reloaded", mark, count=3)
        for port in (serve.port, added):
            await assert_serves_a_good_client(port, echo_server)
        serve.signal(signal.SIGTERM)
        assert await serve.exit_code() == 0
