"""Run a command in a loopback-only network namespace with TCP ports that lead out of it.

    loopback-only python bridge.py PORT=UNIX_SOCKET [PORT=UNIX_SOCKET ...] -- COMMAND ...

A namespace made by ../shared/tools/loopback-only has its own loopback: the host's servers
(the dashboard under test) are not there. Unix sockets in the file system are shared across
namespaces, so this listens on 127.0.0.1:PORT inside and passes each connection to
UNIX_SOCKET, where the test forwards it to the real server. The command (a browser) can then
reach exactly those ports and nothing else. Exits with the command's exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except ConnectionError:
        pass


def forward(unix_path: str):  # type: ignore[no-untyped-def]
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream_writer = await asyncio.open_unix_connection(unix_path)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        for side in (writer, upstream_writer):
            side.close()
            with contextlib.suppress(ConnectionError):
                await side.wait_closed()

    return handle


async def main(argv: list[str]) -> int:
    split = argv.index("--")
    servers = []
    for mapping in argv[:split]:
        port, _, unix_path = mapping.partition("=")
        servers.append(await asyncio.start_server(forward(unix_path), "127.0.0.1", int(port)))
    process = await asyncio.create_subprocess_exec(*argv[split + 1 :])
    async with asyncio.timeout(60):
        code = await process.wait()
    for server in servers:
        server.close()
    return code


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
