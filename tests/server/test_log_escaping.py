"""A real client cannot forge or colour the server's log lines with a username or a target."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from e2e import (
    BIND,
    ProxyFactory,
    credentials,
    greeting,
    login,
    raw_connection,
    read_exactly,
    read_reply,
    request,
)

from socksauth import logs

USERNAME_PASSWORD = 0x02
FORGED_LINE = "2026-12-02T07:00:00 INFO socksauth.client: 10.9.9.9:1 user=admin CONNECT payroll:443"
LINE_START = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) socksauth\.")


@pytest.fixture(params=["text", "json"])
def captured(request: pytest.FixtureRequest) -> Iterator[tuple[str, io.StringIO]]:
    """What the server logs, in the format asked for, while the test runs."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logs.JsonFormatter() if request.param == "json" else logs.TextFormatter())
    root = logging.getLogger(logs.LOGGER_NAME)
    saved = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield request.param, stream
    finally:
        root.removeHandler(handler)
        root.setLevel(saved)


def assert_no_forged_line(log_format: str, text: str) -> None:
    lines = text.splitlines()
    assert lines
    for line in lines:
        assert line.isprintable(), line
        if log_format == "json":
            entry = json.loads(line)
            assert "\n" not in entry["message"] and "\x1b" not in entry["message"]
        else:
            assert LINE_START.match(line), line
        assert not line.startswith(FORGED_LINE[:20])


@pytest.mark.parametrize("separator", ["\n", "\r", "\u2028", "\x1b[2K\r"])
async def test_a_username_from_the_wire_cannot_start_a_log_line(
    start_proxy: ProxyFactory, captured: tuple[str, io.StringIO], separator: str
) -> None:
    log_format, stream = captured
    forged = "x" + separator + FORGED_LINE[:200]
    async with start_proxy() as proxy:
        async with raw_connection(proxy.port) as (reader, writer):
            writer.write(greeting(USERNAME_PASSWORD) + credentials(forged, "wrong"))
            assert await read_exactly(reader, 4) == b"\x05\x02\x01\x01"
        await asyncio.sleep(0.05)  # the per-connection line is written as the client ends
    text = stream.getvalue()
    assert "user=x" in text
    assert_no_forged_line(log_format, text)


async def test_a_target_name_from_the_wire_cannot_start_a_log_line(
    start_proxy: ProxyFactory, captured: tuple[str, io.StringIO]
) -> None:
    log_format, stream = captured
    # BIND switched off: the request is answered 0x07 without resolving the name (no DNS
    # query leaves the machine), and the connection's line still prints the target.
    async with start_proxy(bind_enabled=False) as proxy:
        async with raw_connection(proxy.port) as (reader, writer):
            await login(reader, writer)
            writer.write(request("x\n" + FORGED_LINE[:100] + "\x1b[31m.invalid", 443, BIND))
            assert (await read_reply(reader)).reply == 0x07
        await asyncio.sleep(0.05)
    text = stream.getvalue()
    assert "BIND x\\n2026" in (text if log_format == "text" else text.replace("\\\\", "\\"))
    assert_no_forged_line(log_format, text)
