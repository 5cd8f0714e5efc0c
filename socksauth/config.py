"""Settings: one frozen, validated object built once from flags and environment."""

from __future__ import annotations

import ipaddress
import os
import zoneinfo
from collections.abc import Iterable, Sequence
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
        return not self.clients or in_networks(host, self.clients)


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


@dataclass(frozen=True, slots=True, kw_only=True)
class ThrottleSettings:
    """The login throttle's thresholds and times (auth/throttle.py; the README's policy table).

    Each is a ``login_*`` setting of serve (``enabled`` is ``login_throttle``); the defaults
    follow OWASP, fail2ban, Keycloak, Dovecot and Entra smart lockout: cheap at first,
    growing delays before any lockout, short lockouts that grow, the owner's way back.
    """

    enabled: bool = True
    # Counted failures of one (username, address) pair that cost nothing extra: typos.
    free_failures: int = 3
    # The delay after them, doubled per further counted failure, up to max_delay_seconds:
    # seconds, not minutes, because SOCKS authenticates every connection of a browser.
    delay_seconds: float = 0.5
    max_delay_seconds: float = 4.0
    # Counted failures that lock an unfamiliar pair out (about 7 delayed guesses after the
    # free ones); the lockout starts at lockout_seconds and doubles per repeated lockout.
    lockout_failures: int = 10
    lockout_seconds: float = 60.0
    max_lockout_seconds: float = 900.0
    # A pair's counters are forgotten after this long without a counted failure.
    window_seconds: float = 900.0
    # A repeat of one of a pair's last N wrong passwords (kept as keyed HMACs) is not
    # counted again: a script with a stale password is delayed, never locked.
    remembered_passwords: int = 3
    # A successful login makes its address familiar for the user for this long; a familiar
    # pair is delayed but not locked, until it has more than familiar_max_failures counted
    # failures within a day (then it loses its standing and the server warns).
    familiar_days: float = 30.0
    familiar_max_failures: int = 50
    # An address that failed for this many distinct usernames within the window is spraying:
    # every attempt from it (but a familiar pair's) is delayed.
    spray_usernames: int = 10
    # Delayed attempts one address may have waiting at once; more fail at once.
    max_delayed_per_address: int = 4
    # Clients in these networks are delayed at most, never locked out.
    exempt_networks: tuple[IPNetwork, ...] = ()
    # Pairs and addresses remembered per process (the least recently failed are forgotten).
    max_entries: int = 100_000

    def __post_init__(self) -> None:
        for name in (
            "free_failures",
            "lockout_failures",
            "remembered_passwords",
            "familiar_max_failures",
            "spray_usernames",
            "max_delayed_per_address",
            "max_entries",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"login_{name}: must be at least 1")
        for name in ("lockout_seconds", "window_seconds", "familiar_days", "max_delay_seconds"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"login_{name}: must be a positive number")
        if not 0 <= self.delay_seconds <= self.max_delay_seconds:
            raise ConfigError("login_delay_seconds: must be 0 or more and at most the max delay")
        if self.max_lockout_seconds < self.lockout_seconds:
            raise ConfigError("login_max_lockout_seconds: must be at least the lockout")

    def is_exempt(self, host: str) -> bool:
        return in_networks(host, self.exempt_networks)


@dataclass(frozen=True, slots=True, kw_only=True)
class EgressPool:
    """A named set of local addresses that users' outbound traffic may leave from."""

    name: str
    addresses: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.name}={','.join(self.addresses)}"


def parse_egress_pool(text: str) -> EgressPool:
    """``NAME=ADDR,ADDR,...``; ConfigError naming the problem."""
    name, equals, rest = text.partition("=")
    name = name.strip()
    if not equals or not name or not name.replace("-", "").replace("_", "").isalnum():
        raise ConfigError(f"egress pool {text!r}: write NAME=ADDRESS,ADDRESS (a name of letters, "
                          "digits, - and _)")  # fmt: skip
    addresses = []
    for item in rest.split(","):
        try:
            addresses.append(str(ipaddress.ip_address(item.strip())))
        except ValueError:
            raise ConfigError(
                f"egress pool {name}: {item.strip()!r} is not an IP address"
            ) from None
    return EgressPool(name=name, addresses=tuple(addresses))


def default_workers() -> int:
    """The cores this process may run on: its CPU affinity (taskset, cpusets, containers
    pinned to cores), which os.cpu_count() ignores."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not on every platform (macOS)
        return os.cpu_count() or 1


def verify_threads(configured: int | None, workers: int) -> int:
    """Password verification threads for each of ``workers`` processes: as configured, else
    one machine-wide budget of one thread per core, divided among the workers (at least one)."""
    if configured is not None:
        return configured
    return max(1, default_workers() // workers)


def default_relay_memory_budget() -> int:
    """A quarter of the machine's physical memory: room for the rest of the process (and
    other processes) when many tunnels back up at once."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4
    except (ValueError, OSError, AttributeError):  # not on every platform
        return 1 << 30


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
    # None: the machine's cores shared among the workers (verify_threads()), so N workers do
    # not run N times as many hashes as there are cores and starve every event loop.
    password_verify_threads: int | None = None
    relay_buffer_bytes: int = 256 * 1024
    # All tunnels' relay buffers (and what their sinks hold) together; beyond it the tunnels
    # whose peers read slowest stop reading until those drain (server/relay.py). None: no cap.
    relay_memory_budget_bytes: int | None = field(default_factory=default_relay_memory_budget)
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
    # An HTTP proxy (CONNECT and absolute-form http://) on every listener, told apart from
    # SOCKS5 by the first byte; same users, policy, limits and audit.
    http_enabled: bool = True
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
    # Traffic quotas (server/quota.py): every this often a node writes the bytes its users'
    # tunnels moved and reads every node's totals; a node's unflushed share is what a user
    # moves in this long, and a used-up quota ends tunnels within about twice this.
    quota_flush_seconds: float = 0.5
    # Where a quota's day, week and month begin (an IANA zone name); hours are counted here.
    quota_time_zone: str = "UTC"
    # Named sets of local addresses for users' outbound traffic (user set --egress pool:NAME).
    egress_pools: tuple[EgressPool, ...] = ()
    # A session key in a username (alice-session-abc123) keeps one egress address this long
    # after its last use; then the next request picks anew.
    egress_session_ttl_seconds: float = 600.0
    # What separates the account name from a session key in a username; empty: no session
    # keys (the whole username is the account's name).
    session_separator: str = "-session-"
    log_level: str = "INFO"
    # "text": human-readable lines; "json": one JSON object per line.
    log_format: str = "text"
    # The login throttle (auth/throttle.py, ThrottleSettings above for what each means).
    login_throttle: bool = True
    login_free_failures: int = 3
    login_delay_seconds: float = 0.5
    login_max_delay_seconds: float = 4.0
    login_lockout_failures: int = 10
    login_lockout_seconds: float = 60.0
    login_max_lockout_seconds: float = 900.0
    login_window_seconds: float = 900.0
    login_remembered_passwords: int = 3
    login_familiar_days: float = 30.0
    login_familiar_max_failures: int = 50
    login_spray_usernames: int = 10
    login_max_delayed_per_address: int = 4
    login_exempt_networks: tuple[IPNetwork, ...] = ()

    def __post_init__(self) -> None:
        if not self.listen:
            raise ConfigError("listen: at least one address is needed")
        for name in (
            "handshake_timeout_seconds",
            "connect_timeout_seconds",
            "udp_idle_timeout_seconds",
            "bind_timeout_seconds",
            "change_poll_seconds",
            "quota_flush_seconds",
            "egress_session_ttl_seconds",
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
        if self.password_verify_threads is not None and self.password_verify_threads < 1:
            raise ConfigError("password_verify_threads: must be at least 1")
        if self.relay_buffer_bytes < 4096:
            raise ConfigError("relay_buffer_bytes: must be at least 4096")
        if not self.node_name or len(self.node_name) > 255:
            raise ConfigError("node_name: must be 1 to 255 characters")
        if not self.shutdown_grace_seconds >= 0:
            raise ConfigError("shutdown_grace_seconds: must be zero or more seconds")
        names = [pool.name for pool in self.egress_pools]
        if len(set(names)) != len(names):
            raise ConfigError("egress_pools: a pool name is given twice")
        if self.session_separator.strip() != self.session_separator:
            raise ConfigError("session_separator: must not start or end with whitespace")
        try:
            self.quota_zone()
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(
                f"quota_time_zone: {self.quota_time_zone!r} is not a known time zone "
                "(an IANA name such as UTC or Europe/Berlin)"
            ) from None
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError("log_level: must be one of DEBUG, INFO, WARNING, ERROR")
        if self.log_format not in ("text", "json"):
            raise ConfigError("log_format: must be 'text' or 'json'")
        self.throttle_settings()  # validates the login_* settings

    def throttle_settings(self) -> ThrottleSettings:
        """The ``login_*`` settings as the login throttle takes them."""
        return ThrottleSettings(
            enabled=self.login_throttle,
            free_failures=self.login_free_failures,
            delay_seconds=self.login_delay_seconds,
            max_delay_seconds=self.login_max_delay_seconds,
            lockout_failures=self.login_lockout_failures,
            lockout_seconds=self.login_lockout_seconds,
            max_lockout_seconds=self.login_max_lockout_seconds,
            window_seconds=self.login_window_seconds,
            remembered_passwords=self.login_remembered_passwords,
            familiar_days=self.login_familiar_days,
            familiar_max_failures=self.login_familiar_max_failures,
            spray_usernames=self.login_spray_usernames,
            max_delayed_per_address=self.login_max_delayed_per_address,
            exempt_networks=self.login_exempt_networks,
        )

    def quota_zone(self) -> zoneinfo.ZoneInfo:
        """The time zone of quota periods (ZoneInfo caches it: cheap to call)."""
        return zoneinfo.ZoneInfo(self.quota_time_zone)

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
        return in_networks(host, self.proxy_protocol_networks)


def in_networks(host: str, networks: Sequence[IPNetwork]) -> bool:
    """Whether the client address ``host`` (a zone index dropped, IPv4-mapped IPv6 as IPv4)
    lies in one of ``networks``; False for anything that is not an IP address."""
    try:
        address = ipaddress.ip_address(host.partition("%")[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def key_in_network(key: str, network: IPNetwork) -> bool:
    """Whether a throttle address key (an IPv4 address, or an IPv6 /64 written as a network)
    lies in ``network``; an IPv6 key overlaps it."""
    try:
        if "/" in key:
            return ipaddress.ip_network(key).overlaps(network)
        return ipaddress.ip_address(key) in network
    except (ValueError, TypeError):
        return False
