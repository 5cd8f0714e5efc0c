"""`socksauth top` as a person sees it: in an 80x24 tmux pane, reading only the database, it
shows the tunnel a test holds open with its rate moving, re-sorts on a key, and quits on q."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator

import pytest
from cli_runner import SOCKSAUTH, subprocess_environment
from e2e import EchoServer, ProxyFactory, open_tunnel, read_exactly


def _tmux() -> str:
    found = shutil.which("tmux")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("tmux is not installed; .ci/run installs it")
        pytest.skip("tmux is not installed")
    return found


async def _run(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=subprocess_environment({"TERM": "xterm-256color"}),
    )
    async with asyncio.timeout(10):
        output, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, output.decode()


@contextlib.asynccontextmanager
async def tmux_pane(command: str) -> AsyncIterator[tuple[str, str]]:
    """``command`` in a detached 80x24 tmux session on a private server: (tmux, socket)."""
    tmux = _tmux()
    socket_name = f"socksauth-test-{secrets.token_hex(4)}"
    code, output = await _run(
        tmux, "-L", socket_name, "new-session", "-d", "-s", "top", "-x", "80", "-y", "24", command
    )
    assert code == 0, output
    try:
        yield tmux, socket_name
    finally:
        await _run(tmux, "-L", socket_name, "kill-server")


async def capture(tmux: str, socket_name: str) -> list[str]:
    code, output = await _run(tmux, "-L", socket_name, "capture-pane", "-p", "-t", "top")
    assert code == 0, output
    return output.splitlines()


def alice_up_rate(lines: list[str]) -> tuple[int, str] | None:
    """(tunnels, UP/s text) of alice's row, if shown."""
    for line in lines:
        match = re.match(r"alice\s+(\d+)\s+([\d.]+ \S+)\s", line)
        if match:
            return int(match.group(1)), match.group(2)
    return None


async def test_top_shows_a_held_tunnel_with_its_rate_moving_sorts_and_quits_on_q(
    start_proxy: ProxyFactory, echo_server: EchoServer, database_url: str
) -> None:
    async with start_proxy(node_name="node-a", audit_interim_seconds=0.5) as proxy:
        reader, writer, reply = await open_tunnel(proxy.port, echo_server.host, echo_server.port)
        assert reply.reply == 0

        async def send() -> None:
            # Bounded: at most 400 chunks; the pace changes every second, so does the rate.
            for step in range(400):
                size = 4096 if (step // 20) % 2 == 0 else 65536
                writer.write(b"x" * size)
                await read_exactly(reader, size)
                await asyncio.sleep(0.05)

        sending = asyncio.create_task(send())
        command = f"{SOCKSAUTH} top --database-url '{database_url}'"
        try:
            async with tmux_pane(command) as (tmux, socket_name):
                rates: set[str] = set()
                lines: list[str] = []
                deadline = time.monotonic() + 15
                while len(rates) < 2:
                    assert time.monotonic() < deadline, f"rates seen {rates}:\n" + "\n".join(lines)
                    lines = await capture(tmux, socket_name)
                    shown = alice_up_rate(lines)
                    if shown is not None and shown[0] == 1 and not shown[1].startswith("0 "):
                        rates.add(shown[1])
                    await asyncio.sleep(0.25)
                assert len(lines) <= 24 and all(len(line) <= 80 for line in lines)
                assert lines[0].startswith("socksauth top") and "tunnels 1" in lines[0]
                assert "sort: tunnels" in lines[1]
                await _run(tmux, "-L", socket_name, "send-keys", "-t", "top", "n")
                deadline = time.monotonic() + 5
                while "sort: user" not in (await capture(tmux, socket_name))[1]:
                    assert time.monotonic() < deadline, "the n key did not re-sort"
                    await asyncio.sleep(0.1)
                await _run(tmux, "-L", socket_name, "send-keys", "-t", "top", "q")
                deadline = time.monotonic() + 5
                while (await _run(tmux, "-L", socket_name, "has-session", "-t", "top"))[0] == 0:
                    assert time.monotonic() < deadline, "q did not quit top"
                    await asyncio.sleep(0.1)
        finally:
            sending.cancel()
            await asyncio.gather(sending, return_exceptions=True)
            writer.close()
