"""The tunnel over real sockets: pipelined bytes, half-close each way, large transfers with a
slow reader, and flow control that stops reading a client whose target does not read."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import AsyncIterator

import pytest
from e2e import (
    ALICE,
    ALICE_PASSWORD,
    USERNAME_PASSWORD,
    WAIT_SECONDS,
    EchoServer,
    RunningProxy,
    assert_serves_a_good_client,
    credentials,
    greeting,
    open_tunnel,
    raw_connection,
    read_exactly,
    read_until_closed,
    request,
    with_timeout,
)


def handshake_then(payload: bytes, target: EchoServer) -> bytes:
    return (
        greeting(USERNAME_PASSWORD)
        + credentials(ALICE, ALICE_PASSWORD)
        + request(target.host, target.port)
        + payload
    )


# Method selection, auth status, and a success reply with an IPv4 BND.ADDR: 2 + 2 + 10 bytes.
HANDSHAKE_ANSWER_BYTES = 14


async def test_bytes_pipelined_after_the_request_in_one_write_reach_the_target(
    proxy: RunningProxy, echo_server: EchoServer
) -> None:
    payload = b"pipelined payload, sent before any reply"
    async with raw_connection(proxy.port) as (reader, writer):
        writer.write(handshake_then(payload, echo_server))
        answer = await read_exactly(reader, HANDSHAKE_ANSWER_BYTES)
        assert answer[:7] == b"\x05\x02\x01\x00\x05\x00\x00"
        assert await read_exactly(reader, len(payload)) == payload


async def test_bytes_pipelined_with_the_eof_right_behind_them_are_still_delivered(
    proxy: RunningProxy, echo_server: EchoServer
) -> None:
    payload = b"last words"
    async with raw_connection(proxy.port) as (reader, writer):
        writer.write(handshake_then(payload, echo_server))
        writer.write_eof()
        answer = await read_until_closed(reader)
        assert answer[HANDSHAKE_ANSWER_BYTES:] == payload


async def test_a_client_sending_one_byte_at_a_time_gets_the_same_answer(
    proxy: RunningProxy, echo_server: EchoServer
) -> None:
    payload = b"trickled"
    async with raw_connection(proxy.port) as (reader, writer):
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for byte in handshake_then(payload, echo_server):
            writer.write(bytes((byte,)))
            await writer.drain()
            # Spread the bytes over separate segments (TCP_NODELAY sends each at once); the
            # test does not depend on this pause, it only makes split reads likely.
            await asyncio.sleep(0.001)
        answer = await read_exactly(reader, HANDSHAKE_ANSWER_BYTES + len(payload))
        assert answer[:7] == b"\x05\x02\x01\x00\x05\x00\x00"
        assert answer[HANDSHAKE_ANSWER_BYTES:] == payload


async def test_after_the_client_half_closes_the_targets_reply_still_arrives_then_the_end(
    proxy: RunningProxy, echo_server: EchoServer
) -> None:
    reader, writer, reply = await open_tunnel(proxy.port, echo_server.host, echo_server.port)
    try:
        assert reply.reply == 0
        writer.write(b"request then FIN")
        writer.write_eof()  # shutdown(SHUT_WR)
        # The echo server replies after it saw our FIN; then it closes, and so does the tunnel.
        assert await read_until_closed(reader) == b"request then FIN"
        await with_timeout(echo_server.ended.wait())
    finally:
        writer.close()
    await assert_serves_a_good_client(proxy.port, echo_server)


@contextlib.asynccontextmanager
async def banner_server() -> AsyncIterator[tuple[int, asyncio.Future[bytes]]]:
    """A target that sends a banner and FIN first, then reads what the client sends until EOF."""
    received: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            writer.write(b"banner")
            writer.write_eof()
            received.set_result(await reader.read())
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1], received


async def test_after_the_target_half_closes_the_client_can_still_send(
    proxy: RunningProxy,
) -> None:
    async with banner_server() as (port, received):
        reader, writer, reply = await open_tunnel(proxy.port, "127.0.0.1", port)
        try:
            assert reply.reply == 0
            # The target's FIN reaches us after its banner ...
            assert await read_until_closed(reader) == b"banner"
            # ... and our direction still carries data to the target.
            writer.write(b"the client's part")
            writer.write_eof()
            assert await with_timeout(received) == b"the client's part"
        finally:
            writer.close()


TRANSFER_BYTES = 8 * 1024 * 1024


@pytest.mark.parametrize("slow", ["client", "target"])
async def test_8_mib_each_way_arrive_intact_with_a_slow_reader(
    proxy: RunningProxy, echo_server: EchoServer, slow: str
) -> None:
    data = os.urandom(TRANSFER_BYTES)
    delay = 0.002  # per 64 KiB read: about a third of a second for 8 MiB
    if slow == "target":
        echo_server.read_delay_seconds = delay
    reader, writer, reply = await open_tunnel(proxy.port, echo_server.host, echo_server.port)
    assert reply.reply == 0

    async def send() -> None:
        for offset in range(0, len(data), 256 * 1024):
            writer.write(data[offset : offset + 256 * 1024])
            await writer.drain()
        writer.write_eof()

    async def receive() -> bytes:
        digest = hashlib.sha256()
        count = 0
        while chunk := await reader.read(64 * 1024):
            digest.update(chunk)
            count += len(chunk)
            if slow == "client":
                await asyncio.sleep(delay)
        assert count == len(data)
        return digest.digest()

    try:
        async with asyncio.timeout(30):
            _, received = await asyncio.gather(send(), receive())
    finally:
        writer.close()
    assert received == hashlib.sha256(data).digest()


async def test_a_target_that_stops_reading_stops_the_proxy_reading_the_client(
    proxy: RunningProxy, echo_server: EchoServer
) -> None:
    """Flow control: memory per tunnel stays bounded; no bytes are lost once reading resumes."""
    echo_server.reading.clear()
    reader, writer, reply = await open_tunnel(proxy.port, echo_server.host, echo_server.port)
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    try:
        assert reply.reply == 0
        chunk = os.urandom(1024 * 1024)
        limit = 128 * 1024 * 1024
        sent = 0
        # Write until our writes stall. Without flow control the proxy would buffer all of it
        # in memory and we would get through all 128 MiB.
        while sent < limit:
            writer.write(chunk)
            sent += len(chunk)
            try:
                await asyncio.wait_for(writer.drain(), 0.5)
            except TimeoutError:
                break
        # Kernel socket buffers on loopback can hold tens of MiB; the proxy adds little to that.
        assert sent < 48 * 1024 * 1024, f"{sent} bytes accepted while the target read nothing"

        echo_server.reading.set()

        doubled = chunk * 2  # any run of up to 1 MiB of the stream, at any offset

        async def receive() -> int:
            count = 0
            while count < sent:
                block = await reader.read(1024 * 1024)
                assert block, "tunnel closed early"
                offset = count % len(chunk)
                assert block == doubled[offset : offset + len(block)]
                count += len(block)
            return count

        async with asyncio.timeout(WAIT_SECONDS):
            _, count = await asyncio.gather(writer.drain(), receive())
        assert count == sent
    finally:
        writer.close()
