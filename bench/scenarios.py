"""What is measured: the subjects (the direct baseline, socksauth, another proxy) and `Bench`'s
phases, each run on every subject in a given order (throughput, exchange, idle, busy, storm),
and the --workers 1 vs 2 comparison."""

from __future__ import annotations

import resource
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.children import Child
from bench.plan import GIB, Plan
from bench.socks5 import Route
from bench.target import Database, Server, cpu_seconds, pss_kib, serving_processes

# The server needs two descriptors per tunnel (client and target) plus a few of its own.
SERVER_SPARE_FDS = 100


@dataclass
class Subject:
    """One thing measured: the direct baseline, a socksauth server, or an external proxy."""

    name: str
    route: Route
    pid: int | None = None
    server: Server | None = None
    database: Database | None = None
    storm_users: list[list[str]] = field(default_factory=list)  # per round
    values: list[dict[str, Any]] = field(default_factory=list)  # per round

    @property
    def direct(self) -> bool:
        return self.route.proxy is None

    def cpu(self) -> float | None:
        return cpu_seconds(self.pid) if self.pid else None


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


class Bench:
    def __init__(
        self,
        plan: Plan,
        ports: dict[str, int],
        clients: list[Child],
        log: Any,
        server_args: list[str],
    ) -> None:
        self.plan = plan
        self.server_args = server_args  # --server-arg, for every socksauth started here
        self.sink = ("127.0.0.1", ports["sink"])
        self.source = ("127.0.0.1", ports["source"])
        self.echo = ("127.0.0.1", ports["echo"])
        self.client, self.client2 = clients
        self.log = log
        self.notes: list[str] = []

    def say(self, text: str) -> None:
        print(text, file=self.log, flush=True)

    def guarded(self, what: str, phase: Callable[[], Any]) -> Any:
        """Run one phase; a failed job (load generator error, server that would not start)
        becomes a note in the report and the run goes on with the next phase."""
        try:
            return phase()
        except (RuntimeError, TimeoutError, OSError, subprocess.SubprocessError) as error:
            self.notes.append(f"{what} failed: {error}")
            self.say(f"  {what} FAILED: {error}")
            return None

    # -- throughput ---------------------------------------------------------------------------
    def throughput(self, order: list[Subject], round_values: dict[str, dict[str, Any]]) -> None:
        plan = self.plan
        for tunnels in (1, 8):
            cap = plan.throughput_cap_bytes if tunnels == 1 else plan.throughput8_cap_bytes
            for direction in ("up", "down"):
                key = f"tp{tunnels}_{direction}"
                for subject in order:
                    cpu0 = subject.cpu()
                    result = self.client.call(
                        "throughput",
                        route=subject.route,
                        target=self.sink if direction == "up" else self.source,
                        direction=direction,
                        tunnels=tunnels,
                        cap_bytes=cap,
                        seconds=plan.throughput_seconds,
                    )
                    cpu1 = subject.cpu()
                    values = round_values[subject.name]
                    values[key] = result["mb_per_s"]
                    if cpu0 is not None and cpu1 is not None:
                        values[f"cpu_gib_{key}"] = (cpu1 - cpu0) / (result["bytes"] / GIB)
                    self.say(
                        f"  {subject.name:>12} {key:<10} {result['mb_per_s']:9.1f} MB/s "
                        f"({result['bytes'] / GIB:.2f} GiB in {result['seconds']:.2f} s)"
                    )

    # -- full exchange -------------------------------------------------------------------------
    def exchange(self, order: list[Subject], round_values: dict[str, dict[str, Any]]) -> None:
        plan = self.plan
        for clients in plan.exchange_clients:
            for subject in order:
                cpu0 = subject.cpu()
                result = self.client.call(
                    "exchange",
                    route=subject.route,
                    target=self.echo,
                    clients=clients,
                    seconds=plan.exchange_seconds,
                    max_count=plan.exchange_max,
                )
                cpu1 = subject.cpu()
                values = round_values[subject.name]
                latencies = result["latencies"]
                values[f"ex{clients}_rate"] = result["per_s"]
                values[f"ex{clients}_p50"] = percentile(latencies, 0.50) * 1e3
                values[f"ex{clients}_p99"] = percentile(latencies, 0.99) * 1e3
                values[f"ex{clients}_errors"] = sum(result["errors"].values())
                if cpu0 is not None and cpu1 is not None and result["completed"]:
                    values[f"ex{clients}_cpu"] = (cpu1 - cpu0) / (result["completed"] / 1000)
                self.say(
                    f"  {subject.name:>12} exchange@{clients:<4} {result['per_s']:8.0f} conn/s "
                    f"p50 {values[f'ex{clients}_p50']:.2f} ms "
                    f"p99 {values[f'ex{clients}_p99']:.2f} ms errors {result['errors'] or 0}"
                )

    # -- idle tunnels --------------------------------------------------------------------------
    def idle(self, order: list[Subject], round_values: dict[str, dict[str, Any]]) -> None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        for wanted in self.plan.idle_counts:
            for subject in order:
                if subject.direct:
                    continue
                count = wanted
                server = None
                pid = subject.pid
                if subject.database is not None:
                    # A fresh server: what an idle tunnel costs, not what earlier phases left.
                    server = Server(subject.database, f"{subject.name}-idle", self.server_args)
                    server.start()
                    pid = server.pid
                    time.sleep(0.5)  # the workers fork after the supervisor's log line
                    # SO_REUSEPORT spreads tunnels over the workers; leave 10 % for unevenness.
                    workers = serving_processes(pid)
                    per_process = (hard - SERVER_SPARE_FDS) // 2
                    capacity = per_process if workers == 1 else int(workers * per_process * 0.9)
                    count = min(wanted, capacity)
                    if count < wanted:
                        note = (
                            f"idle {wanted}: capped at {count} tunnels: the server needs two "
                            f"descriptors per tunnel and RLIMIT_NOFILE's hard limit is {hard} "
                            "(raising it needs CAP_SYS_RESOURCE)"
                        )
                        if note not in self.notes:
                            self.notes.append(note)
                route = (
                    Route(server.address, subject.route.user, subject.route.password)
                    if (server)
                    else subject.route
                )
                try:
                    self.client.call(
                        "exchange",
                        route=route,
                        target=self.echo,
                        clients=1,
                        seconds=10.0,
                        max_count=20,
                    )  # warm: the login is cached, and argon2's 19 MiB allocated, in every
                    # worker (SO_REUSEPORT spreads 20 connections over them); the first
                    # verification only ends after 0.2 s, and a worker that made it during
                    # the tunnels would add its 19 MiB to the per-tunnel figure
                    time.sleep(0.5)
                    before = pss_kib(pid) if pid else None
                    opened = self.client.call(
                        "idle_open",
                        timeout=self.plan.idle_seconds + 30,
                        route=route,
                        target=self.echo,
                        count=count,
                        concurrency=self.plan.idle_concurrency,
                        seconds=self.plan.idle_seconds,
                    )
                    time.sleep(1.0)
                    after = pss_kib(pid) if pid else None
                    checked = self.client.call(
                        "idle_check", concurrency=self.plan.idle_concurrency, seconds=60.0
                    )
                finally:
                    self.client.call("idle_close")
                    if server is not None:
                        server.stop()
                values = round_values[subject.name]
                # A tunnel that failed to open, or failed its echo afterwards, is one error.
                errors = (count - opened["open"]) + sum(checked["errors"].values())
                values[f"idle{wanted}_errors"] = errors
                values[f"idle{wanted}_count"] = opened["open"]
                if before is not None and after is not None and opened["open"]:
                    values[f"idle{wanted}_pss"] = (after - before) / opened["open"]
                self.say(
                    f"  {subject.name:>12} idle {count:>6}: opened {opened['open']} in "
                    f"{opened['seconds']:.1f} s, errors {opened['errors'] or 0} / "
                    f"{checked['errors'] or 0}, PSS {before} → {after} KiB"
                )

    # -- busy host -----------------------------------------------------------------------------
    def busy(self, order: list[Subject], round_values: dict[str, dict[str, Any]]) -> None:
        """One client address opening many connections at once, as a crawler or a NAT does."""
        plan = self.plan
        for subject in order:
            values = round_values[subject.name]
            for key, tunnels, payload in (
                ("busy", plan.busy_tunnels, plan.busy_payload_bytes),
                ("burst", plan.busy_exchanges, 32),
            ):
                result = self.client.call(
                    "busy_echo",
                    route=subject.route,
                    target=self.echo,
                    tunnels=tunnels,
                    payload_bytes=payload,
                    seconds=30.0,
                )
                values[f"{key}_completed"] = result["completed"]
                values[f"{key}_errors"] = sum(result["errors"].values())
                values[f"{key}_seconds"] = result["seconds"]
                values[f"{key}_p99"] = percentile(result["latencies"], 0.99) * 1e3
                self.say(
                    f"  {subject.name:>12} {tunnels} at once ({payload} B echo): "
                    f"{result['completed']} in {result['seconds']:.2f} s, "
                    f"errors {result['errors'] or 0}"
                )
            if subject.direct:
                continue
            # A silent flood from 127.0.0.1 while another address (127.0.0.2) is served.
            proxy = subject.route.proxy
            assert proxy is not None
            started = time.monotonic()
            flood = self.client2.call(
                "flood_open", proxy=proxy, count=plan.flood_connections, seconds=30.0
            )
            try:
                other = Route(proxy, subject.route.user, subject.route.password, "127.0.0.2")
                result = self.client.call(
                    "exchange",
                    route=other,
                    target=self.echo,
                    clients=1,
                    seconds=2.0,
                    max_count=50,
                )
                values["flood_other_p99"] = percentile(result["latencies"], 0.99) * 1e3
                values["flood_other_errors"] = sum(result["errors"].values())
                time.sleep(max(0.0, plan.flood_hold_seconds - (time.monotonic() - started)))
            finally:
                closed = self.client2.call("flood_close")
            values["flood_closed"] = closed["closed_by_proxy"] / max(1, closed["count"])
            self.say(
                f"  {subject.name:>12} silent flood {flood['open']}: another address "
                f"p99 {values['flood_other_p99']:.2f} ms, errors {result['errors'] or 0}; "
                f"{closed['closed_by_proxy']} closed by the proxy after "
                f"{plan.flood_hold_seconds:.0f} s"
            )

    # -- cold-login storm ----------------------------------------------------------------------
    def _probe(self, subject: Subject, during: Callable[[], dict[str, Any] | None]) -> Any:
        self.client.call(
            "probe_start",
            route=subject.route,
            echo=self.echo,
            interval_seconds=self.plan.probe_interval_seconds,
            login_clients=self.plan.probe_login_clients,
            max_seconds=self.plan.storm_max_seconds + 10,
        )
        try:
            extra = during()
        finally:
            probes = self.client.call("probe_stop")
        return probes, extra

    def storm(
        self, order: list[Subject], round_values: dict[str, dict[str, Any]], round_: int
    ) -> None:
        plan = self.plan
        for subject in order:
            if subject.direct or not subject.storm_users:
                continue
            quiet, _ = self._probe(subject, lambda: time.sleep(plan.quiet_seconds))

            def storm(subject: Subject = subject) -> dict[str, Any]:
                time.sleep(0.5)
                result = self.client2.call(
                    "storm",
                    timeout=plan.storm_max_seconds + 30,
                    proxy=subject.route.proxy,
                    users=subject.storm_users[round_],
                    password=subject.route.password,
                    echo=self.echo,
                )
                time.sleep(0.5)
                return result

            cpu0 = subject.cpu()
            loud, result = self._probe(subject, storm)
            cpu1 = subject.cpu()
            values = round_values[subject.name]
            for key, samples in (("tunnel", "tunnel_rtts"), ("login", "login_latencies")):
                values[f"storm_{key}_p99_quiet"] = percentile(quiet[samples], 0.99) * 1e3
                values[f"storm_{key}_p99"] = percentile(loud[samples], 0.99) * 1e3
                values[f"storm_{key}_max"] = max(loud[samples], default=float("nan")) * 1e3
            values["storm_seconds"] = result["seconds"]
            values["storm_p99"] = percentile(result["latencies"], 0.99) * 1e3
            values["storm_errors"] = (
                sum(result["errors"].values())
                + sum(quiet["errors"].values())
                + sum(loud["errors"].values())
            )
            if cpu0 is not None and cpu1 is not None:
                values["storm_cpu"] = cpu1 - cpu0
            self.say(
                f"  {subject.name:>12} storm {len(subject.storm_users[round_])} users: "
                f"{result['completed']} in {result['seconds']:.2f} s, errors {result['errors']}; "
                f"tunnel p99 {values['storm_tunnel_p99_quiet']:.2f} → "
                f"{values['storm_tunnel_p99']:.2f} ms; warm login p99 "
                f"{values['storm_login_p99_quiet']:.2f} → {values['storm_login_p99']:.2f} ms"
            )


def measure_workers(bench: Bench, template: Subject, plan: Plan) -> str:
    """8-tunnel upload and the exchange at 128 clients with --workers 1 and --workers 2."""
    assert template.database is not None
    servers = []
    try:
        for workers in (1, 2):
            server = Server(
                template.database, f"workers{workers}", [*bench.server_args, f"--workers={workers}"]
            )
            server.start()
            servers.append(server)
        values: list[dict[str, float]] = []
        for round_ in range(plan.rounds):
            figures: dict[str, float] = {}
            order = [0, 1] if round_ % 2 == 0 else [1, 0]
            for index in order:
                route = Route(servers[index].address, template.route.user, template.route.password)
                tp = bench.client.call(
                    "throughput",
                    route=route,
                    target=bench.sink,
                    direction="up",
                    tunnels=8,
                    cap_bytes=plan.throughput8_cap_bytes,
                    seconds=plan.throughput_seconds,
                )
                ex = bench.client.call(
                    "exchange",
                    route=route,
                    target=bench.echo,
                    clients=128,
                    seconds=plan.exchange_seconds,
                    max_count=plan.exchange_max,
                )
                prefix = "workers1_" if index == 0 else "workers_"
                figures[prefix + "tp8_up"] = tp["mb_per_s"]
                figures[prefix + "ex128_rate"] = ex["per_s"]
            values.append(figures)
            bench.say(f"  workers round {round_ + 1}: {figures}")
        for round_, figures in enumerate(values):
            if round_ < len(template.values):
                template.values[round_].update(figures)
        return "measured on the first store (rows '--workers 2 ÷ 1')"
    finally:
        for server in servers:
            server.stop()
