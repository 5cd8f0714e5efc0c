"""The benchmark's counts and durations: the full plan and the quick (smoke) one."""

from __future__ import annotations

from dataclasses import dataclass

GIB = 1 << 30
METRICS = ("throughput", "exchange", "idle", "busy", "storm", "workers")


@dataclass(frozen=True)
class Plan:
    """Counts and durations; every load is bounded by both."""

    rounds: int = 3
    throughput_seconds: float = 3.0
    throughput_cap_bytes: int = 4 * GIB  # per tunnel, 1 tunnel
    throughput8_cap_bytes: int = 1 * GIB  # per tunnel, 8 tunnels
    exchange_clients: tuple[int, ...] = (1, 16, 128)
    exchange_seconds: float = 3.0
    exchange_max: int = 100_000
    idle_counts: tuple[int, ...] = (1_000, 5_000, 10_000)
    # A busy host opens many at once; beyond the server's 32 handshakes per address they wait.
    idle_concurrency: int = 200
    busy_tunnels: int = 200
    busy_payload_bytes: int = 64 << 10
    busy_exchanges: int = 1_000
    flood_connections: int = 1_000
    # The silent flood is held past the server's default handshake deadline (10 s).
    flood_hold_seconds: float = 11.0
    idle_seconds: float = 120.0
    storm_users: int = 200
    probe_interval_seconds: float = 0.01
    probe_login_clients: int = 2
    quiet_seconds: float = 3.0
    storm_max_seconds: float = 90.0


FULL = Plan()
QUICK = Plan(
    rounds=1,
    throughput_seconds=1.0,
    throughput_cap_bytes=1 * GIB,
    throughput8_cap_bytes=256 << 20,
    exchange_seconds=1.0,
    idle_counts=(200, 1_000),
    storm_users=50,
    busy_exchanges=500,
    flood_connections=500,
    quiet_seconds=1.5,
)
