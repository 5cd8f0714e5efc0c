"""Listening on IPv4 and IPv6: --listen forms, several listeners at once, each one's real
bound address in the startup log (port 0 asks the OS for one)."""

from __future__ import annotations

import logging
import re

import pytest
from e2e import (
    allow_loopback_targets,
    ipv6_loopback_available,
    login,
    raw_connection,
    read_exactly,
    read_reply,
    request,
)

from socksauth import app
from socksauth.config import ListenAddress, Settings, parse_listen
from socksauth.errors import ConfigError
from socksauth.store.database import connected
from socksauth.store.interfaces import NewRule
from socksauth.store.rules import SqlRuleStore
from socksauth.store.users import SqlUserStore


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:1080", ListenAddress(host="127.0.0.1", port=1080)),
        ("127.0.0.1:0", ListenAddress(host="127.0.0.1", port=0)),
        ("[::1]:1080", ListenAddress(host="::1", port=1080)),
        ("[::1]:0", ListenAddress(host="::1", port=0)),
        ("[::]:1080", ListenAddress(host="::", port=1080)),
        ("[::1]", ListenAddress(host="::1", port=1080)),
        (":1081", ListenAddress(host="0.0.0.0", port=1081)),
        ("localhost", ListenAddress(host="localhost", port=1080)),
    ],
)
def test_parse_listen_reads_ipv4_ipv6_and_names(text: str, expected: ListenAddress) -> None:
    assert parse_listen(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("::1:1080", r"\[ADDRESS\]:PORT"),
        ("[::1:1080", "missing ']'"),
        ("[::1]1080", "expected ':PORT'"),
        ("127.0.0.1:http", "not a number"),
        ("127.0.0.1:65536", "out of range"),
    ],
)
def test_parse_listen_names_the_problem(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_listen(text)


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (ListenAddress(host="127.0.0.1", port=1080), "127.0.0.1:1080"),
        (ListenAddress(host="::1", port=1080), "[::1]:1080"),
    ],
)
def test_a_listen_address_prints_as_it_is_written(address: ListenAddress, text: str) -> None:
    assert str(address) == text
    assert parse_listen(text) == address


@pytest.mark.skipif(not ipv6_loopback_available(), reason="no IPv6 loopback (::1) here")
async def test_ipv4_and_ipv6_listeners_log_their_real_ports_and_both_serve(
    database_url: str, user_store: SqlUserStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="socksauth")
    await allow_loopback_targets(database_url)
    # The proxy's own ports are protected beyond loopback: only a rule naming the address
    # itself lets a client reach them (here, to use one listener as the other's target).
    async with connected(database_url) as engine:
        await SqlRuleStore(engine).add_rule(NewRule(action="allow", cidr="127.0.0.1/32"), 1)
    settings = Settings(
        database_url=database_url,
        listen=(parse_listen("127.0.0.1:0"), parse_listen("[::1]:0")),
    )
    async with app.running_server(settings) as server:
        v4, v6 = server.bound
        assert v4.host == "127.0.0.1" and v6.host == "::1"
        assert v4.port != 0 and v6.port != 0
        logged = re.findall(r"listening on (\S+)", caplog.text)
        assert logged == [f"127.0.0.1:{v4.port}", f"[::1]:{v6.port}"]
        for bound in (v4, v6):
            # A CONNECT through each listener back to the other one's port: a full handshake
            # (the target answers with its method selection to our greeting).
            other = v6 if bound is v4 else v4
            async with raw_connection(bound.port, bound.host) as (reader, writer):
                await login(reader, writer)
                writer.write(request(other.host, other.port))
                reply = await read_reply(reader)
                assert reply.reply == 0x00
                # The reply's BND.ADDR is in the target's family.
                assert (":" in reply.host) == (":" in other.host)
                writer.write(b"\x05\x01\x02")
                assert await read_exactly(reader, 2) == b"\x05\x02"
