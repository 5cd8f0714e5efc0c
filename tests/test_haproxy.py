"""Two `socksauth serve` nodes on one PostgreSQL database behind a real HAProxy, on loopback.

HAProxy prepends a PROXY protocol v2 header to every connection it makes to a node and asks
each node's /readyz, as deploy/haproxy.cfg has it. Clients connect from 127.0.0.23, so an
audit row that names 127.0.0.23 proves the node took the client's address from the header
(the node itself sees HAProxy at 127.0.0.1). Besides the balanced frontend, one frontend per
node reaches that node alone, so a test can choose the node its client lands on.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from e2e import (
    ALICE,
    ALICE_PASSWORD,
    USERNAME_PASSWORD,
    WAIT_SECONDS,
    EchoServer,
    allow_loopback_targets,
    credentials,
    eventually,
    greeting,
    read_exactly,
    read_reply,
    read_until_closed,
    request,
)
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.auth import accounts
from socksauth.store.audit import SqlAuditStore
from socksauth.store.interfaces import AuditEntry, AuditQuery
from socksauth.store.users import SqlUserStore

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.timeout(120),
    # Two nodes share a database only on PostgreSQL (the SQLite store is one file per host).
    pytest.mark.parametrize("database_url", ["postgresql"], indirect=True),
]

# The client's own address: HAProxy connects to the nodes from 127.0.0.1, so only the PROXY
# header can tell a node about this one.
CLIENT_HOST = "127.0.0.23"
NEW_PASSWORD = "alice-New-Secret-3b9e"
# The most a change of an account may take to be enforced on every node (the task's bound).
PROPAGATION_BOUND_SECONDS = 2.0
SHUTDOWN_GRACE_SECONDS = 30.0


def _haproxy() -> str:
    """The haproxy binary; skipped without one, but CI (which installs it) fails instead."""
    # /usr/sbin is not on every user's PATH.
    path = os.pathsep.join((os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin"))
    found = shutil.which("haproxy", path=path)
    if found is None:
        reason = "haproxy is not installed (apt-get install haproxy; .ci/run installs it)"
        if os.environ.get("CI") == "true" or os.environ.get("SOCKSAUTH_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason}; CI must run the HAProxy end-to-end test")
        pytest.skip(reason)
    return found


def _listening_socket() -> socket.socket:
    """A bound, listening loopback socket on a free port, for HAProxy to inherit (bind fd@N):
    the port is ours from the start, no other process can take it in between."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


@dataclass
class Node:
    """One `socksauth serve --workers 1` process and everything it logged."""

    name: str
    process: asyncio.subprocess.Process
    port: int = 0
    admin_port: int = 0
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    async def read_log(self) -> None:
        assert self.process.stderr is not None
        while line := await self.process.stderr.readline():
            self.lines.append(line.decode(errors="replace").rstrip("\n"))

    def logged(self, pattern: str) -> re.Match[str] | None:
        return next((m for line in self.lines if (m := re.search(pattern, line))), None)

    async def wait_logged(self, pattern: str, what: str) -> re.Match[str]:
        await eventually(
            lambda: self.logged(pattern) is not None or self.process.returncode is not None,
            timeout=30,
            what=f"{self.name}: {what}",
        )
        match = self.logged(pattern)
        assert match is not None, f"{self.name} exited before {what}:\n" + "\n".join(self.lines)
        return match


async def start_node(name: str, database_url: str, config: Path, grace: float) -> Node:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SOCKSAUTH_")}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "socksauth", "serve", "--workers", "1",
        "--config", str(config),
        "--database-url", database_url,
        "--listen", "127.0.0.1:0",
        "--node-name", name,
        "--proxy-protocol-from", "127.0.0.1/32",
        "--admin-listen", "127.0.0.1:0",
        "--shutdown-grace", str(grace),
        stdin=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )  # fmt: skip
    node = Node(name, process)
    node.reader = asyncio.create_task(node.read_log())
    match = await node.wait_logged(r"admin listener .* on http://127\.0\.0\.1:(\d+)", "admin")
    node.admin_port = int(match.group(1))
    match = await node.wait_logged(r"listening on 127\.0\.0\.1:(\d+)", "listening")
    node.port = int(match.group(1))
    return node


@dataclass
class HAProxy:
    process: asyncio.subprocess.Process
    stats_socket: Path
    balanced_port: int
    # node name -> the port of the frontend that reaches that node only
    port_to: dict[str, int]

    async def server_states(self) -> dict[tuple[str, str], str]:
        """(backend, server) -> status (UP, DOWN, ...) from the runtime API's `show stat`."""
        reader, writer = await asyncio.open_unix_connection(str(self.stats_socket))
        try:
            writer.write(b"show stat\n")
            async with asyncio.timeout(WAIT_SECONDS):
                text = (await reader.read()).decode()
        finally:
            writer.close()
        rows = [line.split(",") for line in text.splitlines() if line and line[0] != "#"]
        return {(row[0], row[1]): row[17] for row in rows if len(row) > 17}


def haproxy_config(
    nodes: list[Node], stats_socket: Path, balanced: socket.socket, pinned: list[socket.socket]
) -> str:
    """deploy/haproxy.cfg's settings for these loopback nodes: PROXY v2, leastconn, /readyz
    on each node's admin port; checks every 200 ms so that a test sees state changes soon."""
    checked = "\n".join(
        f"    server {node.name} 127.0.0.1:{node.port} send-proxy-v2 "
        f"check port {node.admin_port} inter 200ms fall 1 rise 1"
        for node in nodes
    )
    pinned_sections = "\n".join(
        f"frontend to_{node.name}\n"
        f"    bind fd@{sock.fileno()}\n"
        f"    default_backend only_{node.name}\n"
        f"backend only_{node.name}\n"
        f"    server {node.name} 127.0.0.1:{node.port} send-proxy-v2\n"
        for node, sock in zip(nodes, pinned, strict=True)
    )
    # One thread: leastconn then counts every connection before it places the next.
    return f"""global
    nbthread 1
    maxconn 1000
    stats socket {stats_socket} mode 600 level admin

defaults
    mode tcp
    timeout connect 5s
    timeout client 1m
    timeout server 1m
    timeout client-fin 10s
    timeout server-fin 10s
    timeout check 2s
    retries 2
    option redispatch
    source 127.0.0.1

frontend balanced
    bind fd@{balanced.fileno()}
    default_backend nodes

backend nodes
    balance leastconn
    option httpchk
    http-check send meth GET uri /readyz
    http-check expect status 200
{checked}

{pinned_sections}"""


async def start_haproxy(binary: str, nodes: list[Node], directory: Path) -> HAProxy:
    balanced = _listening_socket()
    pinned = [_listening_socket() for _ in nodes]
    stats_socket = directory / "haproxy.sock"
    config = directory / "haproxy.cfg"
    config.write_text(haproxy_config(nodes, stats_socket, balanced, pinned))
    try:
        process = await asyncio.create_subprocess_exec(
            binary, "-f", str(config), "-db",
            pass_fds=[balanced.fileno(), *(sock.fileno() for sock in pinned)],
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        return HAProxy(
            process,
            stats_socket,
            balanced.getsockname()[1],
            {node.name: sock.getsockname()[1] for node, sock in zip(nodes, pinned, strict=True)},
        )
    finally:
        # HAProxy holds its own copies now.
        balanced.close()
        for sock in pinned:
            sock.close()


async def all_up(haproxy: HAProxy, nodes: list[Node]) -> None:
    """Wait until HAProxy's health checks (GET /readyz) find every node ready."""
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError):
            states = await haproxy.server_states()
            if all(states.get(("nodes", node.name)) == "UP" for node in nodes):
                return
        assert haproxy.process.returncode is None, "haproxy exited"
        assert time.monotonic() < deadline, f"nodes not UP in HAProxy: {states}"
        await asyncio.sleep(0.05)


@dataclass
class Cluster:
    a: Node
    b: Node
    haproxy: HAProxy
    engine: AsyncEngine

    async def audit(self) -> list[AuditEntry]:
        entries = await SqlAuditStore(self.engine).find_entries(AuditQuery(limit=None))
        return list(entries)


async def _stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.kill()
        await process.wait()


@pytest.fixture
def scratch() -> Iterator[Path]:
    # Short, unlike tmp_path: a Unix socket's path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="socksauth-ha-") as directory:
        yield Path(directory)


@pytest.fixture
async def cluster(
    database_url: str,
    engine: AsyncEngine,
    user_store: SqlUserStore,  # alice, on the migrated database
    scratch: Path,
) -> AsyncIterator[Cluster]:
    binary = _haproxy()
    await allow_loopback_targets(database_url)  # the echo target listens on loopback
    config = scratch / "empty.toml"  # no /etc/socksauth/socksauth.toml of this machine
    config.write_text("")
    started: list[asyncio.subprocess.Process] = []
    nodes: list[Node] = []
    try:
        for name in ("node-a", "node-b"):
            node = await start_node(name, database_url, config, SHUTDOWN_GRACE_SECONDS)
            nodes.append(node)
            started.append(node.process)
        haproxy = await start_haproxy(binary, nodes, scratch)
        started.append(haproxy.process)
        await all_up(haproxy, nodes)
        yield Cluster(nodes[0], nodes[1], haproxy, engine)
    finally:
        for process in reversed(started):
            await _stop(process)
        for node in nodes:
            if node.reader is not None:
                await node.reader
            # Shown by pytest when the test failed.
            print(f"--- {node.name} log ---", *node.lines, sep="\n")


# --- a client from 127.0.0.23 ----------------------------------------------------------------


@contextlib.asynccontextmanager
async def client(port: int) -> AsyncIterator[tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    async with asyncio.timeout(WAIT_SECONDS):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(CLIENT_HOST, 0)
        )
    try:
        yield reader, writer
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def log_in(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, password: str) -> bool:
    """RFC 1929 with alice's name and ``password``: whether the proxy accepted it."""
    writer.write(greeting(USERNAME_PASSWORD))
    assert await read_exactly(reader, 2) == b"\x05\x02"
    writer.write(credentials(ALICE, password))
    version, status = await read_exactly(reader, 2)
    assert version == 1
    return status == 0


async def connect_echo(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    echo: EchoServer,
    password: str = ALICE_PASSWORD,
) -> None:
    """Log in, CONNECT to the echo server and make one round trip."""
    assert await log_in(reader, writer, password)
    writer.write(request(echo.host, echo.port))
    assert (await read_reply(reader)).reply == 0x00
    await round_trip(reader, writer, b"through haproxy")


async def round_trip(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
) -> None:
    writer.write(data)
    assert await read_exactly(reader, len(data)) == data


async def end_tunnel(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The client's clean end: FIN, the rest of the echo, the proxy's FIN."""
    writer.write_eof()
    assert await read_until_closed(reader) == b""


def local_port(writer: asyncio.StreamWriter) -> int:
    port: int = writer.get_extra_info("sockname")[1]
    return port


async def audited(cluster: Cluster, client_port: int) -> AuditEntry:
    """The finished audit row of the tunnel whose client used ``client_port``."""
    found: list[AuditEntry] = []

    async def look() -> bool:
        found[:] = [
            entry
            for entry in await cluster.audit()
            if entry.client_port == client_port and not entry.is_open
        ]
        return bool(found)

    deadline = time.monotonic() + WAIT_SECONDS
    while not await look():
        assert time.monotonic() < deadline, f"no finished audit row for client port {client_port}"
        await asyncio.sleep(0.05)
    (entry,) = found
    return entry


# --- the tests -------------------------------------------------------------------------------


async def test_clients_reach_targets_through_both_nodes_and_the_audit_has_their_address(
    cluster: Cluster,
    echo_server: EchoServer,
) -> None:
    port = cluster.haproxy.balanced_port
    async with client(port) as (reader1, writer1):
        await connect_echo(reader1, writer1, echo_server)
        # leastconn: the second tunnel, opened while the first is open, goes to the other node.
        async with client(port) as (reader2, writer2):
            await connect_echo(reader2, writer2, echo_server)
            await end_tunnel(reader1, writer1)
            await end_tunnel(reader2, writer2)
            ports = local_port(writer1), local_port(writer2)
    first, second = [await audited(cluster, client_port) for client_port in ports]

    assert {first.node, second.node} == {"node-a", "node-b"}
    for entry in (first, second):
        assert entry.client_host == CLIENT_HOST
        assert entry.username == ALICE
        assert entry.outcome == "closed"
        assert entry.target_port == echo_server.port
        assert entry.bytes_from_client == entry.bytes_to_client == len(b"through haproxy")
    # The echo server saw the nodes' outbound connections, two of them.
    assert len(echo_server.peers) == 2


async def test_a_password_changed_on_one_node_is_enforced_by_the_other_within_2_s(
    cluster: Cluster,
    echo_server: EchoServer,
) -> None:
    via_b = cluster.haproxy.port_to["node-b"]
    async with client(via_b) as (reader, writer):
        await connect_echo(reader, writer, echo_server)
        open_port = local_port(writer)

        # The change, made where node A runs (its database, its code), committed when this
        # returns.
        await accounts.change_password(SqlUserStore(cluster.engine), ALICE, NEW_PASSWORD)
        changed = time.monotonic()

        # Node B: the old password stops working ...
        rejected_after = None
        while rejected_after is None:
            elapsed = time.monotonic() - changed
            assert elapsed < WAIT_SECONDS, "node B still accepts the old password"
            async with client(via_b) as (probe_reader, probe_writer):
                if not await log_in(probe_reader, probe_writer, ALICE_PASSWORD):
                    rejected_after = time.monotonic() - changed
        # ... and the tunnel opened with it ends (revoked).
        assert await read_until_closed(reader) == b""
        revoked_after = time.monotonic() - changed

    print(
        f"\nnode B: old password refused {rejected_after:.3f} s after the change; "
        f"its open tunnel ended after {revoked_after:.3f} s"
    )
    assert rejected_after < PROPAGATION_BOUND_SECONDS
    assert revoked_after < PROPAGATION_BOUND_SECONDS
    entry = await audited(cluster, open_port)
    assert (entry.node, entry.outcome, entry.client_host) == ("node-b", "revoked", CLIENT_HOST)

    for node in ("node-a", "node-b"):
        async with client(cluster.haproxy.port_to[node]) as (reader, writer):
            await connect_echo(reader, writer, echo_server, password=NEW_PASSWORD)
            await end_tunnel(reader, writer)


async def test_sigterm_lets_a_node_finish_its_open_tunnels_within_the_grace_period(
    cluster: Cluster,
    echo_server: EchoServer,
) -> None:
    via_a = cluster.haproxy.port_to["node-a"]
    async with client(via_a) as (reader, writer):
        await connect_echo(reader, writer, echo_server)
        tunnel_port = local_port(writer)

        signalled = time.monotonic()
        cluster.a.process.send_signal(signal.SIGTERM)
        # Its listener is closed and the grace period has begun.
        await cluster.a.wait_logged(r"stopping: 1 connection\(s\) open", "the grace period")

        # Node A accepts nobody now, so HAProxy's check finds it not ready: new clients of
        # the balanced frontend land on node B ...
        await eventually_down(cluster, "node-a")
        async with client(cluster.haproxy.balanced_port) as (new_reader, new_writer):
            await connect_echo(new_reader, new_writer, echo_server)
            await end_tunnel(new_reader, new_writer)
            newcomer = await audited(cluster, local_port(new_writer))
        assert newcomer.node == "node-b"

        # ... while the open tunnel through node A keeps relaying, both ways, in bulk.
        assert cluster.a.process.returncode is None
        for size in (1, 64 * 1024, 1024 * 1024):
            await round_trip(reader, writer, os.urandom(size))
        await end_tunnel(reader, writer)
        closed = time.monotonic()

    # With its last tunnel gone, node A exits at once, long before the grace period ends.
    async with asyncio.timeout(WAIT_SECONDS):
        code = await cluster.a.process.wait()
    exited = time.monotonic()
    print(
        f"\nnode A: tunnel relayed for {closed - signalled:.3f} s after SIGTERM; "
        f"exited {exited - closed:.3f} s after the client closed it (grace "
        f"{SHUTDOWN_GRACE_SECONDS:g} s)"
    )
    assert code == 0, "\n".join(cluster.a.lines)
    assert exited - signalled < SHUTDOWN_GRACE_SECONDS
    entry = await audited(cluster, tunnel_port)
    assert (entry.node, entry.outcome, entry.client_host) == ("node-a", "closed", CLIENT_HOST)
    assert entry.bytes_from_client == len(b"through haproxy") + 1 + 64 * 1024 + 1024 * 1024
    assert entry.bytes_to_client == entry.bytes_from_client


async def eventually_down(cluster: Cluster, name: str) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while (await cluster.haproxy.server_states()).get(("nodes", name)) == "UP":
        assert time.monotonic() < deadline, f"HAProxy still finds {name} ready"
        await asyncio.sleep(0.05)
