"""The naive reference: a SOCKS5 server as most people would write it with asyncio streams.

One user, RFC 1929, CONNECT to IPv4 or a name, two copy loops; no store, no audit, no policy,
no limits. It runs in the same rounds as socksauth so that a slow machine and a slow server can
be told apart: socksauth ÷ reference is the cost of what socksauth does on top of the protocol.
uvloop is used when it is installed, as ``socksauth serve`` does.

    python -m bench.reference USER PASSWORD   # prints the port it listens on, then serves
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import subprocess
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        writer.close()


async def _reply(writer: asyncio.StreamWriter, code: int) -> None:
    writer.write(b"\x05" + bytes([code]) + b"\x00\x01" + bytes(6))
    await writer.drain()


async def _client(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, user: bytes, password: bytes
) -> None:
    try:
        version, count = await reader.readexactly(2)
        methods = await reader.readexactly(count)
        if version != 5 or 2 not in methods:
            writer.write(b"\x05\xff")
            return
        writer.write(b"\x05\x02")
        _, ulen = await reader.readexactly(2)
        got_user = await reader.readexactly(ulen)
        (plen,) = await reader.readexactly(1)
        got_password = await reader.readexactly(plen)
        if (got_user, got_password) != (user, password):
            writer.write(b"\x01\x01")
            return
        writer.write(b"\x01\x00")
        _, command, _, atyp = await reader.readexactly(4)
        if atyp == 1:
            host = socket.inet_ntoa(await reader.readexactly(4))
        elif atyp == 3:
            (length,) = await reader.readexactly(1)
            host = (await reader.readexactly(length)).decode()
        else:
            await _reply(writer, 0x08)
            return
        (port,) = struct.unpack("!H", await reader.readexactly(2))
        if command != 1:
            await _reply(writer, 0x07)
            return
        try:
            target_reader, target_writer = await asyncio.open_connection(host, port)
        except OSError:
            await _reply(writer, 0x05)
            return
        await _reply(writer, 0x00)
        await asyncio.gather(_pipe(reader, target_writer), _pipe(target_reader, writer))
        target_writer.close()
    except (asyncio.IncompleteReadError, ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def serve(user: str, password: str) -> None:
    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _client(reader, writer, user.encode(), password.encode())

    server = await asyncio.start_server(client, "127.0.0.1", 0, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


class ReferenceServer:
    """This module as a child process on 127.0.0.1, for the benchmark."""

    def __init__(self, user: str, password: str) -> None:
        from bench.target import raise_nofile

        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.reference", user, password],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            preexec_fn=raise_nofile,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.strip().isdigit():
            self.stop()
            raise RuntimeError("the reference server did not start")
        self.address = ("127.0.0.1", int(line))
        self.pid = self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def main() -> None:
    user, password = sys.argv[1:3]
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(user, password))
    else:
        with contextlib.suppress(KeyboardInterrupt):
            uvloop.run(serve(user, password))


if __name__ == "__main__":
    main()
