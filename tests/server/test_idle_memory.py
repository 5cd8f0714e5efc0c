"""What the server keeps per idle tunnel: Python objects allocated by socksauth, measured.

Issue #5 asks for at most 8 KiB of memory per idle tunnel in the whole process; the Python
objects the server allocates for one (client connection, record, relay, task, transports) are
the part this test bounds. It was 12.7 KiB while the handshake's 4 KiB read buffer and the
handshake's coroutine frames stayed for the tunnel's whole life; now about 5.5 KiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import tracemalloc

from e2e import EchoServer, RunningProxy, open_tunnel, read_exactly

TUNNELS = 100
# Bytes of Python objects allocated from socksauth's code per idle tunnel, at most.
MAX_BYTES_PER_TUNNEL = 7 * 1024


def _allocated_by_socksauth(snapshot: tracemalloc.Snapshot) -> int:
    only_ours = snapshot.filter_traces([tracemalloc.Filter(True, "*/socksauth/*", all_frames=True)])
    return sum(stat.size for stat in only_ours.statistics("filename"))


async def test_an_idle_tunnel_keeps_no_handshake_buffer_and_little_else(
    proxy: RunningProxy, echo_server: EchoServer
) -> None:
    writers: list[asyncio.StreamWriter] = []
    try:
        # The first tunnel verifies the password and builds what is built once; not counted.
        reader, writer, reply = await open_tunnel(proxy.port, echo_server.host, echo_server.port)
        writers.append(writer)
        assert reply.reply == 0x00
        # An allocation counts when one of its 10 innermost frames is in socksauth (the
        # server's code is never further from the allocation), which leaves out this test's
        # own clients and the echo server. Deeper tracebacks only make the test slower.
        tracemalloc.start(10)
        try:
            before = _allocated_by_socksauth(tracemalloc.take_snapshot())
            tunnels = []
            for _ in range(TUNNELS):
                reader, writer, reply = await open_tunnel(
                    proxy.port, echo_server.host, echo_server.port
                )
                writers.append(writer)
                assert reply.reply == 0x00
                tunnels.append((reader, writer))
            # The success reply goes out just before the relay takes over the client, in the
            # same callback: every tunnel is established and idle now.
            after = _allocated_by_socksauth(tracemalloc.take_snapshot())
        finally:
            tracemalloc.stop()
        per_tunnel = (after - before) / TUNNELS
        assert proxy.server.active_clients == TUNNELS + 1
        assert per_tunnel <= MAX_BYTES_PER_TUNNEL, f"{per_tunnel:.0f} bytes per idle tunnel"
        # Still working tunnels, not leftovers: the last one echoes.
        reader, writer = tunnels[-1]
        writer.write(b"ping")
        assert await read_exactly(reader, 4) == b"ping"
    finally:
        for writer in writers:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
