"""Settings: one frozen, validated object built once from flags and environment."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from socksauth.errors import ConfigError

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

DEFAULT_PORT = 1080


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenAddress:
    """Where a listener binds; port 0 asks the OS for a free port (tests)."""

    host: str
    port: int
    # Source networks allowed to connect to this listener; empty: any. Others are closed at
    # accept, before they can send a byte we would parse.
    clients: tuple[IPNetwork, ...] = ()

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def admits(self, host: str) -> bool:
        """Whether a client at ``host`` may connect to this listener."""
        return not self.clients or _in_networks(host, self.clients)


def parse_listen(text: str) -> ListenAddress:
    """``HOST:PORT``, ``[V6]:PORT``, ``HOST`` or ``:PORT``, optionally followed by
    ``@CIDR,CIDR`` (the clients this listener admits); ConfigError naming the problem."""
    text, at, clients = text.partition("@")
    if at:
        address = parse_listen(text)
        networks = parse_networks(clients.split(","), f"listen address {text!r}")
        return ListenAddress(host=address.host, port=address.port, clients=networks)
    host, port_text = text, str(DEFAULT_PORT)
    if text.startswith("["):
        close = text.find("]")
        if close < 0:
            raise ConfigError(f"listen address {text!r}: missing ']' after an IPv6 address")
        host, rest = text[1:close], text[close + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise ConfigError(f"listen address {text!r}: expected ':PORT' after ']'")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    elif text.count(":") > 1:
        raise ConfigError(f"listen address {text!r}: write IPv6 addresses as [ADDRESS]:PORT")
    host = host or "0.0.0.0"
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"listen address {text!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"listen address {text!r}: port {port} is out of range 0-65535")
    return ListenAddress(host=host, port=port)


def parse_networks(texts: Iterable[str], setting: str) -> tuple[IPNetwork, ...]:
    networks = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError:
            raise ConfigError(f"{setting}: {text!r} is not an IP network (CIDR)") from None
    return tuple(networks)


def default_workers() -> int:
    """The cores this process may run on: its CPU affinity (taskset, cpusets, containers
    pinned to cores), which os.cpu_count() ignores."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on every platform (macOS)
        return os.cpu_count() or 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything `serve` needs. Validated on construction; build engines from it, not on it."""

    database_url: str
    listen: tuple[ListenAddress, ...] = (ListenAddress(host="127.0.0.1", port=DEFAULT_PORT),)
    # Clients in these networks may choose method 0x00 (no authentication). Empty by default:
    # everyone authenticates unless the admin says otherwise.
    trusted_networks: tuple[IPNetwork, ...] = ()
    handshake_timeout_seconds: float = 10.0
    connect_timeout_seconds: float = 10.0
    # Argon2 needs ~19 MiB and one core per verification: more threads than cores only queue.
    password_verify_threads: int = field(default_factory=default_workers)
    relay_buffer_bytes: int = 256 * 1024
    # Names this process in the audit (several nodes may share a database); at start, rows
    # this node left open are closed as interrupted: give each process its own name.
    node_name: str = field(default_factory=lambda: os.uname().nodename)
    # Where audit entries go while the database is unreachable; None: next to the SQLite
    # file, else $XDG_STATE_HOME/socksauth/audit-spill-NODE.jsonl.
    audit_spill_path: Path | None = None
    # RFC 1928 §7 UDP ASSOCIATE and §6 BIND; each can be switched off (reply 0x07).
    udp_enabled: bool = True
    # An association also ends after this long without a datagram either way.
    udp_idle_timeout_seconds: float = 120.0
    bind_enabled: bool = True
    # How long a BIND waits for the inbound connection before replying TTL expired (0x06).
    bind_timeout_seconds: float = 30.0
    # Destination policy (server/policy.py): also deny RFC 1918, CGNAT and IPv6 ULA targets
    # unless a rule inside them allows. Loopback, link-local and metadata are always denied.
    deny_private_networks: bool = False
    # Admission caps (server/limits.py); None: no cap.
    max_connections: int | None = 10_000
    max_unauthenticated: int | None = 1_000
    max_unauthenticated_per_address: int | None = 32
    # How often the accounts of connected users (and the rules) are re-read: a disabled,
    # deleted or expired account, or a changed password, ends its tunnels within about this
    # long. None: never (tunnels outlive account changes).
    account_check_seconds: float | None = 2.0
    # How often the store's change counter is read. A change of an account or a rule, made
    # on any node or with the CLI, reaches this node's caches within about this long; with
    # PostgreSQL it is pushed (LISTEN/NOTIFY) within milliseconds and this is the fallback.
    change_poll_seconds: float = 1.0
    # How often open tunnels write their byte counts so far (and rates) to their audit rows,
    # for `socksauth sessions`, `top` and the dashboard; None: only at the end.
    audit_interim_seconds: float | None = 5.0
    # A tunnel that moved no byte either way for this long is closed; None: never.
    idle_timeout_seconds: float | None = 900.0
    # Shutdown (SIGTERM/SIGINT): after accepting stops and handshakes finish, tunnels get this
    # long to end on their own before the rest are closed.
    shutdown_grace_seconds: float = 30.0
    # PROXY protocol v1/v2 (HAProxy): clients connecting from these networks (the load
    # balancers) must start with a PROXY header, whose source address then stands for the
    # client everywhere (audit, rules, throttling). A header from anyone else is a protocol
    # error. Empty: no PROXY protocol.
    proxy_protocol_networks: tuple[IPNetwork, ...] = ()
    # The admin HTTP listener (/metrics, /healthz, /readyz); None: off.
    admin_listen: ListenAddress | None = None
    # Per-user labels on the metrics: one series per user, so opt-in.
    metrics_per_user: bool = False
    log_level: str = "INFO"
    # "text": human-readable lines; "json": one JSON object per line.
    log_format: str = "text"

    def __post_init__(self) -> None:
        if not self.listen:
            raise ConfigError("listen: at least one address is needed")
        for name in (
            "handshake_timeout_seconds",
            "connect_timeout_seconds",
            "udp_idle_timeout_seconds",
            "bind_timeout_seconds",
            "change_poll_seconds",
        ):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name}: must be a positive number of seconds")
        for name in ("account_check_seconds", "idle_timeout_seconds", "audit_interim_seconds"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(f"{name}: must be a positive number of seconds (or none)")
        for name in ("max_connections", "max_unauthenticated", "max_unauthenticated_per_address"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{name}: must be at least 1 (or no limit)")
        if self.password_verify_threads < 1:
            raise ConfigError("password_verify_threads: must be at least 1")
        if self.relay_buffer_bytes < 4096:
            raise ConfigError("relay_buffer_bytes: must be at least 4096")
        if not self.node_name or len(self.node_name) > 255:
            raise ConfigError("node_name: must be 1 to 255 characters")
        if not self.shutdown_grace_seconds >= 0:
            raise ConfigError("shutdown_grace_seconds: must be zero or more seconds")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError("log_level: must be one of DEBUG, INFO, WARNING, ERROR")
        if self.log_format not in ("text", "json"):
            raise ConfigError("log_format: must be 'text' or 'json'")

    def is_trusted(self, host: str) -> bool:
        """Whether a client at ``host`` may skip authentication (method 0x00)."""
        if not self.trusted_networks:
            return False
        try:
            address = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.trusted_networks)

    def is_load_balancer(self, host: str) -> bool:
        """Whether a peer at ``host`` must open with a PROXY protocol header."""
        return _in_networks(host, self.proxy_protocol_networks)


def _in_networks(host: str, networks: tuple[IPNetwork, ...]) -> bool:
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)
