"""The dashboard in a real headless Chromium (Debian's package), run in a network namespace
that has only loopback (../shared/tools/loopback-only): one screenshot per page, each checked,
and the overview's traffic chart drawn by the Chart.js the package serves (no CDN)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from e2e import (
    BOB,
    BOB_PASSWORD,
    EchoServer,
    allow_loopback_targets,
    open_tunnel,
    read_exactly,
)
from PIL import Image
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth import app
from socksauth.config import ListenAddress, Settings
from socksauth.server.admin import bind_admin_socket
from socksauth.store.admin import SqlAdminCredentials
from socksauth.store.interfaces import NewRule, SessionQuery
from socksauth.store.rules import SqlRuleStore
from socksauth.store.sessions import SqlSessionStore
from socksauth.store.users import SqlUserStore

REPOSITORY = Path(__file__).resolve().parents[2]
LOOPBACK_ONLY = REPOSITORY.parent / "shared" / "tools" / "loopback-only"
BRIDGE = Path(__file__).with_name("bridge.py")
# Ports inside the namespace: the dashboard, and the proxy the browser must use.
DASHBOARD_PORT, PROXY_PORT = 18080, 18081
WIDTH, HEIGHT = 1280, 900
# The first dataset colour of static/dashboard.js (#1f77b4).
FIRST_SERIES = (31, 119, 180)
# Where to keep copies of the screenshots (the README shows them), when set.
SCREENSHOTS_VARIABLE = "SOCKSAUTH_SCREENSHOTS_DIR"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.parametrize("database_url", ["sqlite"], indirect=True),
]


def _needed(path: str | None, what: str) -> str:
    if path is None or not os.access(path, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{what} is missing; .ci/run installs it")
        pytest.skip(f"{what} is missing")
    return path


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except ConnectionError:
        pass


@contextlib.asynccontextmanager
async def unix_to_tcp(path: Path, port: int) -> AsyncIterator[None]:
    """Connections to the Unix socket ``path`` go on to 127.0.0.1:``port`` (on the host)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", port)
        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))
        for side in (writer, upstream_writer):
            side.close()

    server = await asyncio.start_unix_server(handle, str(path))
    async with server:
        yield


async def screenshot(chromium: str, directory: Path, page: str, out: Path) -> None:
    """Chromium (headless, under loopback-only) loads ``page`` as bob and saves a PNG."""
    url = f"http://{BOB}:{BOB_PASSWORD}@127.0.0.1:{DASHBOARD_PORT}{page}"
    command = [
        _needed(str(LOOPBACK_ONLY), "../shared/tools/loopback-only"),
        sys.executable, str(BRIDGE),
        f"{DASHBOARD_PORT}={directory / 'dashboard.sock'}",
        f"{PROXY_PORT}={directory / 'proxy.sock'}",
        "--",
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-extensions", "--disable-background-networking", "--disable-sync",
        "--disable-component-update", "--disable-default-apps", "--hide-scrollbars",
        # Anything not on loopback would go to the socksauth under test, whose last rule
        # denies it (and Chromium cannot log in to it anyway).
        f"--proxy-server=socks5://127.0.0.1:{PROXY_PORT}",
        f"--user-data-dir={directory / 'profile'}",
        f"--window-size={WIDTH},{HEIGHT}", "--virtual-time-budget=3000",
        f"--screenshot={out}", url,
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    async with asyncio.timeout(45):
        output, _ = await process.communicate()
    assert process.returncode == 0 and out.exists(), output.decode(errors="replace")[-2000:]


def colours(path: Path) -> tuple[Image.Image, dict[tuple[int, int, int], int]]:
    image = Image.open(path).convert("RGB")
    counts: dict[tuple[int, int, int], int] = {}
    for count, colour in image.getcolors(maxcolors=WIDTH * HEIGHT) or []:
        counts[colour] = count
    return image, counts


async def test_every_page_renders_in_chromium_and_the_chart_is_drawn(
    database_url: str,
    engine: AsyncEngine,
    user_store: SqlUserStore,
    echo_server: EchoServer,
    tmp_path: Path,
) -> None:
    chromium = _needed(shutil.which("chromium"), "chromium")
    await SqlAdminCredentials(engine).set_admin(BOB, True)
    await allow_loopback_targets(database_url)
    await SqlRuleStore(engine).add_rule(NewRule(action="deny"))
    admin_socket = bind_admin_socket(ListenAddress(host="127.0.0.1", port=0))
    settings = Settings(
        database_url=database_url,
        listen=(ListenAddress(host="127.0.0.1", port=0),),
        admin_listen=ListenAddress(host="127.0.0.1", port=admin_socket.getsockname()[1]),
        node_name="gw-1",
        audit_interim_seconds=0.5,
    )
    async with (
        app.running_server(settings, admin_socket=admin_socket) as server,
        unix_to_tcp(tmp_path / "dashboard.sock", settings.admin_listen.port),  # type: ignore[union-attr]
        unix_to_tcp(tmp_path / "proxy.sock", server.bound[0].port),
    ):
        # alice moves a few MiB through a tunnel that stays open: a line in the chart.
        reader, writer, reply = await open_tunnel(
            server.bound[0].port, echo_server.host, echo_server.port
        )
        try:
            assert reply.reply == 0
            for _ in range(32):
                writer.write(b"z" * 65536)
                await read_exactly(reader, 65536)
            sessions = SqlSessionStore(engine)
            deadline = time.monotonic() + 5
            while not [s for s in await sessions.live_sessions(SessionQuery()) if s.updated_at]:
                assert time.monotonic() < deadline, "no interim counts written"
                await asyncio.sleep(0.1)
            shots = {}
            for name, page in (("overview", "/"), ("sessions", "/sessions"), ("rules", "/rules")):
                shots[name] = tmp_path / f"dashboard-{name}.png"
                await screenshot(chromium, tmp_path, page, shots[name])
        finally:
            writer.close()
    for name, path in shots.items():
        image, counts = colours(path)
        assert image.size == (WIDTH, HEIGHT), name
        # The page header bar (#263238) is there: the page rendered, not an error page.
        assert counts.get((0x26, 0x32, 0x38), 0) > 5000, name
        assert len(counts) > 20, f"{name} looks blank"
    _, overview = colours(shots["overview"])
    assert overview.get(FIRST_SERIES, 0) > 300, "the traffic chart drew no line"
    # The live badge of the node, and the allow/deny badges of the rules.
    _, rules = colours(shots["rules"])
    assert rules.get((0x2E, 0x7D, 0x32), 0) > 100 and rules.get((0xC6, 0x28, 0x28), 0) > 100
    keep = os.environ.get(SCREENSHOTS_VARIABLE)
    if keep:
        for path in shots.values():
            shutil.copy(path, Path(keep) / path.name)
