"""The socksauth benchmark (issue #5): one command, figures beside a direct baseline.

    python -m bench.run [--store sqlite|postgresql|both] [--rounds 3] [--quick] [--only ...]
    python -m bench.run --proxy 127.0.0.1:1080 --user U --password P   # any SOCKS5 server

Processes: this one orchestrates and reads /proc; the local peers (sink, source, echo) run in
one process, the load generators in two others, the proxy in its own. On a small machine
they all share the same cores, so the direct baseline and the proxy are measured the same way
(interleaved, in the same round) and the figures that matter are the ratios.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import multiprocessing
import os
import platform
import resource
import secrets
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import load, peers
from bench.reference import ReferenceServer
from bench.socks5 import Route
from bench.target import (
    DEFAULT_PG_ADMIN,
    Database,
    Server,
    cpu_seconds,
    make_workdir,
    pss_kib,
    raise_nofile,
    serve_supports,
    serving_processes,
)

GIB = 1 << 30
METRICS = ("throughput", "exchange", "idle", "busy", "storm", "workers")
PASSWORD = "bench-" + secrets.token_hex(8)
# The server needs two descriptors per tunnel (client and target) plus a few of its own.
SERVER_SPARE_FDS = 100


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


# ---------------------------------------------------------------------------------------------
# Child processes


class Child:
    """A forked process answering calls over a pipe (load.main / peers.main)."""

    def __init__(self, entry: Callable[[Any], None], name: str) -> None:
        context = multiprocessing.get_context("fork")
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=entry, args=(child_conn,), name=name, daemon=True)
        self.process.start()
        child_conn.close()

    def call(self, name: str, timeout: float = 600.0, **kwargs: Any) -> dict[str, Any]:
        self.conn.send((name, kwargs))
        if not self.conn.poll(timeout):
            raise TimeoutError(f"{name}: no answer from the load generator in {timeout} s")
        status, result = self.conn.recv()
        if status != "ok":
            raise RuntimeError(result)
        return result  # type: ignore[no-any-return]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(("exit", {}))
        self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)


# ---------------------------------------------------------------------------------------------
# What is measured


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
    def __init__(self, plan: Plan, ports: dict[str, int], clients: list[Child], log: Any) -> None:
        self.plan = plan
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
                    server = Server(subject.database, f"{subject.name}-idle", _server_args())
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


# ---------------------------------------------------------------------------------------------
# Report


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    unit: str
    baseline: str | None = "direct"  # "direct", another key of the same subject, or None
    target: str = ""
    check: Callable[[float, float | None, dict[str, float]], bool] | None = None


def _rows(plan: Plan) -> list[Row]:
    rows = [
        Row(
            "tp1_up",
            "1 tunnel up",
            "MB/s",
            target="≥ 0.40x direct",
            check=lambda v, r, m: r is not None and r >= 0.40,
        ),
        Row(
            "tp1_down",
            "1 tunnel down",
            "MB/s",
            target="≥ 0.40x direct",
            check=lambda v, r, m: r is not None and r >= 0.40,
        ),
        Row(
            "tp8_up",
            "8 tunnels up",
            "MB/s",
            target="≥ 1-tunnel up",
            check=lambda v, r, m: v >= m.get("tp1_up", float("inf")),
        ),
        Row(
            "tp8_down",
            "8 tunnels down",
            "MB/s",
            target="≥ 1-tunnel down",
            check=lambda v, r, m: v >= m.get("tp1_down", float("inf")),
        ),
    ]
    for mode in ("tp1_up", "tp1_down", "tp8_up", "tp8_down"):
        rows.append(
            Row(
                f"cpu_gib_{mode}",
                f"server CPU per GiB, {mode[2:].replace('_', ' ')}",
                "s",
                baseline=None,
                target="≤ 0.6 s",
                check=lambda v, r, m: v <= 0.6,
            )
        )
    for clients in plan.exchange_clients:
        gated = clients in (16, 128)
        rows.append(
            Row(
                f"ex{clients}_rate",
                f"full exchange @{clients}",
                "conn/s",
                target="≥ 0.45x direct" if gated else "",
                check=(lambda v, r, m: r is not None and r >= 0.45) if gated else None,
            )
        )
    for clients in plan.exchange_clients:
        rows.append(
            Row(
                f"ex{clients}_p99",
                f"exchange p99 @{clients}",
                "ms",
                target="≤ 8 ms" if clients == 16 else "",
                check=(lambda v, r, m: v <= 8.0) if clients == 16 else None,
            )
        )
    for clients in plan.exchange_clients:
        gated = clients in (16, 128)
        rows.append(
            Row(
                f"ex{clients}_cpu",
                f"server CPU per 1,000 conn @{clients}",
                "s",
                baseline=None,
                target="≤ 0.25 s" if gated else "",
                check=(lambda v, r, m: v <= 0.25) if gated else None,
            )
        )
    for clients in plan.exchange_clients:
        rows.append(
            Row(
                f"ex{clients}_errors",
                f"exchange errors @{clients}",
                "",
                baseline=None,
                target="0",
                check=lambda v, r, m: v == 0,
            )
        )
    for count in plan.idle_counts:
        rows.append(
            Row(
                f"idle{count}_pss",
                f"PSS per idle tunnel @{count:,}",
                "KiB",
                baseline=None,
                target="≤ 8 KiB",
                check=lambda v, r, m: v <= 8.0,
            )
        )
        rows.append(
            Row(
                f"idle{count}_count",
                f"idle tunnels held @{count:,}",
                "",
                baseline=None,
                target=f"{count:,}",
                check=lambda v, r, m, c=count: v >= c,
            )
        )
        rows.append(
            Row(
                f"idle{count}_errors",
                f"idle tunnel errors @{count:,}",
                "",
                baseline=None,
                target="0",
                check=lambda v, r, m: v == 0,
            )
        )
    rows += [
        Row(
            "busy_completed",
            f"busy host: {plan.busy_tunnels} tunnels at once, 64 KiB echo, completed",
            "",
            baseline=None,
            target=f"{plan.busy_tunnels}",
            check=lambda v, r, m: v == plan.busy_tunnels,
        ),
        Row("busy_seconds", f"busy host: {plan.busy_tunnels} tunnels take", "s"),
        Row("busy_p99", "busy host: tunnel p99", "ms"),
        Row(
            "burst_completed",
            f"busy host: {plan.busy_exchanges} exchanges at once, completed",
            "",
            baseline=None,
            target=f"{plan.busy_exchanges}",
            check=lambda v, r, m: v == plan.busy_exchanges,
        ),
        Row("burst_seconds", f"busy host: {plan.busy_exchanges} exchanges take", "s"),
        Row(
            "flood_other_p99",
            f"silent flood of {plan.flood_connections}: another address's exchange p99",
            "ms",
            baseline=None,
            target="< 100 ms",
            check=lambda v, r, m: v < 100,
        ),
        Row(
            "flood_closed",
            "silent flood: share closed by the proxy by the deadline",
            "",
            baseline=None,
            target="1",
            check=lambda v, r, m: v == 1,
        ),
        Row(
            "storm_tunnel_p99",
            "storm: tunnel echo p99 (vs quiet)",
            "ms",
            baseline="storm_tunnel_p99_quiet",
            target="≤ 2x quiet",
            check=lambda v, r, m: r is not None and r <= 2.0,
        ),
        Row(
            "storm_login_p99",
            "storm: warm login p99 (vs quiet)",
            "ms",
            baseline="storm_login_p99_quiet",
            target="≤ 2x quiet",
            check=lambda v, r, m: r is not None and r <= 2.0,
        ),
        Row("storm_tunnel_max", "storm: tunnel echo max", "ms", baseline=None),
        Row("storm_login_max", "storm: warm login max", "ms", baseline=None),
        Row("storm_seconds", f"storm: {plan.storm_users} cold logins take", "s", baseline=None),
        Row("storm_p99", "storm: cold login p99", "ms", baseline=None),
        Row("storm_cpu", "storm: server CPU", "s", baseline=None),
        Row(
            "storm_errors",
            "storm: errors",
            "",
            baseline=None,
            target="0",
            check=lambda v, r, m: v == 0,
        ),
        Row("workers_tp8_up", "--workers 2 ÷ 1: 8 tunnels up", "MB/s", baseline="workers1_tp8_up"),
        Row(
            "workers_ex128_rate",
            "--workers 2 ÷ 1: exchange @128",
            "conn/s",
            baseline="workers1_ex128_rate",
        ),
    ]
    return rows


def _stats(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def summarise(subject: Subject, direct: Subject, plan: Plan) -> list[dict[str, Any]]:
    medians: dict[str, float] = {}
    for key in {k for values in subject.values for k in values}:
        series = [values[key] for values in subject.values if key in values]
        medians[key] = statistics.median(series)
    out = []
    for row in _rows(plan):
        pairs = []
        for round_, values in enumerate(subject.values):
            if row.key not in values:
                continue
            if row.baseline == "direct":
                base = direct.values[round_].get(row.key) if round_ < len(direct.values) else None
            elif row.baseline:
                base = values.get(row.baseline)
            else:
                base = None
            pairs.append((values[row.key], base))
        if not pairs:
            continue
        value = _stats([v for v, _ in pairs])
        bases = [b for _, b in pairs if b is not None]
        ratios = [v / b for v, b in pairs if b]
        ratio = _stats(ratios) if ratios else None
        passed = None
        if row.check is not None:
            passed = bool(row.check(value["median"], ratio["median"] if ratio else None, medians))
        out.append(
            {
                "key": row.key,
                "metric": row.label,
                "unit": row.unit,
                "baseline": row.baseline,
                "value": value,
                "values": [v for v, _ in pairs],
                "baseline_value": _stats(bases) if bases else None,
                "baseline_values": bases,
                "ratio": ratio,
                "ratios": ratios,
                "target": row.target,
                "pass": passed,
            }
        )
    return out


def _fmt(stats: dict[str, float] | None, ratio: bool = False) -> str:
    if stats is None:
        return "-"

    def one(x: float) -> str:
        if ratio:
            return f"{x:.2f}x"
        if x != x:  # nan
            return "nan"
        if x == int(x) and abs(x) < 100:
            return str(int(x))
        if abs(x) >= 100:
            return f"{x:,.0f}"
        if abs(x) >= 10:
            return f"{x:.1f}"
        return f"{x:.2f}" if abs(x) >= 0.1 or x == 0 else f"{x:.3f}"

    if stats["min"] == stats["max"]:
        return one(stats["median"])
    return f"{one(stats['median'])} [{one(stats['min'])}..{one(stats['max'])}]"


def print_table(name: str, rows: list[dict[str, Any]], rounds: int) -> None:
    header = ("metric", "baseline", name, "ratio", "target", "result")
    lines = []
    for row in rows:
        label = row["metric"] + (f" ({row['unit']})" if row["unit"] else "")
        result = {True: "pass", False: "FAIL", None: ""}[row["pass"]]
        lines.append(
            (
                label,
                _fmt(row["baseline_value"]),
                _fmt(row["value"]),
                _fmt(row["ratio"], ratio=True),
                row["target"],
                result,
            )
        )
    widths = [max(len(str(line[i])) for line in [header, *lines]) for i in range(len(header))]
    print(
        f"\n== {name}: medians of {rounds} round(s) [min..max]; baseline is the direct run "
        "of the same round unless the metric says otherwise"
    )
    for line in [header, tuple("-" * w for w in widths), *lines]:
        print(" | ".join(str(cell).ljust(width) for cell, width in zip(line, widths, strict=True)))


# What socksauth costs beyond a naive server on the same machine in the same rounds.
VERSUS_REFERENCE = (
    ("ex16_rate", "full exchange @16 (conn/s)"),
    ("ex128_rate", "full exchange @128 (conn/s)"),
    ("ex16_p99", "exchange p99 @16 (ms)"),
    ("ex16_cpu", "server CPU per 1,000 conn @16 (s)"),
    ("ex128_cpu", "server CPU per 1,000 conn @128 (s)"),
    ("tp1_up", "1 tunnel up (MB/s)"),
    ("tp1_down", "1 tunnel down (MB/s)"),
    ("busy_seconds", "busy host: 200 tunnels take (s)"),
    ("burst_seconds", "busy host: exchanges at once take (s)"),
)


def print_versus_reference(subject: Subject, reference: Subject, title: str = "") -> None:
    """Per-round ratios socksauth ÷ reference (or any two subjects), then their median
    [min..max]."""
    lines = []
    for key, label in VERSUS_REFERENCE:
        pairs = [
            (mine[key], theirs[key])
            for mine, theirs in zip(subject.values, reference.values, strict=False)
            if key in mine and key in theirs and theirs[key]
        ]
        if not pairs:
            continue
        lines.append(
            (
                label,
                _fmt(_stats([t for _, t in pairs])),
                _fmt(_stats([m for m, _ in pairs])),
                _fmt(_stats([m / t for m, t in pairs]), ratio=True),
            )
        )
    if not lines:
        return
    header = ("metric", reference.name, subject.name, f"{subject.name} ÷ {reference.name}")
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    print(
        f"\n== {title}"
        if title
        else f"\n== {subject.name} beside the naive asyncio-streams reference (bench/reference.py)"
    )
    for line in [header, tuple("-" * w for w in widths), *lines]:
        print(" | ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))


# ---------------------------------------------------------------------------------------------
# Main


SERVER_ARGS: list[str] = []  # --server-arg, for every socksauth started here


def _server_args() -> list[str]:
    return list(SERVER_ARGS)


def _parse_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--store", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 3; 1 with --quick)")
    parser.add_argument("--quick", action="store_true", help="small counts, short runs (smoke)")
    parser.add_argument(
        "--only", default=",".join(METRICS), help=f"comma-separated subset of {','.join(METRICS)}"
    )
    parser.add_argument(
        "--proxy",
        metavar="HOST:PORT",
        help="benchmark this SOCKS5 server instead of starting socksauth",
    )
    parser.add_argument("--user", default="bench", help="login for --proxy")
    parser.add_argument("--password", help="password for --proxy")
    parser.add_argument(
        "--proxy-pid", type=int, help="pid of the --proxy server, to measure its CPU time and PSS"
    )
    parser.add_argument(
        "--pg-admin",
        default=os.environ.get("BENCH_PG_ADMIN", DEFAULT_PG_ADMIN),
        help="admin DSN to create/drop the temporary database [%(default)s]",
    )
    parser.add_argument(
        "--json", type=Path, help="where to save the results [bench/results/<timestamp>.json]"
    )
    parser.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra option for `socksauth serve`, repeatable (e.g. --server-arg=--workers=1)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument(
        "--interim-compare",
        type=float,
        metavar="SECONDS",
        help="also start, per store, a server with --audit-interim-interval=SECONDS and one "
        "with it off (0), measured in the same rounds; prints the on ÷ off ratios",
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="do not measure the naive asyncio-streams reference server (bench/reference.py)",
    )
    args = parser.parse_args(argv)
    args.only = [m.strip() for m in args.only.split(",") if m.strip()]
    for metric in args.only:
        if metric not in METRICS:
            parser.error(f"--only: unknown metric {metric!r}")
    if args.proxy and args.password is None:
        parser.error("--proxy needs --password")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    SERVER_ARGS[:] = args.server_arg
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = Plan(**{**asdict(plan), "rounds": args.rounds})
    started = time.monotonic()
    raise_nofile()
    log = sys.stderr
    workdir = make_workdir()
    children: list[Child] = []
    subjects: list[Subject] = []
    references: list[ReferenceServer] = []
    workers_note = ""
    try:
        peer = Child(peers.main, "bench-peers")
        children.append(peer)
        ports = peer.conn.recv()
        clients = [Child(load.main, "bench-load"), Child(load.main, "bench-load-2")]
        children += clients
        bench = Bench(plan, ports, clients, log)
        direct = Subject("direct", Route())
        reference: Subject | None = None
        if not args.no_reference:
            reference_server = ReferenceServer("bench", PASSWORD)
            references.append(reference_server)
            reference = Subject(
                "reference",
                Route(reference_server.address, "bench", PASSWORD),
                pid=reference_server.pid,
            )

        if args.proxy:
            subjects.append(
                Subject(
                    "proxy",
                    Route(_parse_address(args.proxy), args.user, args.password),
                    pid=args.proxy_pid,
                )
            )
            bench.notes.append("storm and workers are measured only on socksauth started here")
        else:
            stores = ["sqlite", "postgresql"] if args.store == "both" else [args.store]
            for store in stores:
                print(f"setting up {store} …", file=log, flush=True)
                database = Database(store, workdir, pg_admin=args.pg_admin)
                database.create()
                subject = Subject(store, Route(None, "bench", PASSWORD), database=database)
                subjects.append(subject)
                database.add_user("bench", PASSWORD)
                if "storm" in args.only:
                    subject.storm_users = [
                        [f"storm{r}_{i:04d}" for i in range(plan.storm_users)]
                        for r in range(plan.rounds)
                    ]
                    database.add_users_fast(
                        [u for users in subject.storm_users for u in users], PASSWORD
                    )
                subject.server = Server(database, store, _server_args())
                subject.server.start()
                subject.pid = subject.server.pid
                subject.route = Route(subject.server.address, "bench", PASSWORD)
                if args.interim_compare is not None:
                    # Same database, own node names: each server's audit rows stay its own.
                    for suffix, seconds in (("on", args.interim_compare), ("off", 0.0)):
                        extra = Subject(f"{store}-interim-{suffix}", Route(None, "bench", PASSWORD))
                        extra.server = Server(
                            database,
                            extra.name,
                            [
                                *_server_args(),
                                f"--audit-interim-interval={seconds:g}",
                                f"--node-name=bench-interim-{suffix}",
                            ],
                        )
                        extra.server.start()
                        extra.pid = extra.server.pid
                        extra.route = Route(extra.server.address, "bench", PASSWORD)
                        subjects.append(extra)

        measured = [*subjects, *([reference] if reference else [])]
        # Warm-up, not counted: logins cached, heaps grown, code paths hot.
        for subject in [direct, *measured]:
            clients[0].call(
                "exchange",
                route=subject.route,
                target=bench.echo,
                clients=4,
                seconds=0.3,
                max_count=500,
            )
            clients[0].call(
                "throughput",
                route=subject.route,
                target=bench.sink,
                direction="up",
                tunnels=1,
                cap_bytes=64 << 20,
                seconds=0.5,
            )

        everyone = [direct, *measured]
        for round_ in range(plan.rounds):
            print(f"round {round_ + 1}/{plan.rounds}", file=log, flush=True)
            shift = round_ % len(everyone)
            order = everyone[shift:] + everyone[:shift]  # interleaved: who goes first rotates
            round_values: dict[str, dict[str, Any]] = {s.name: {} for s in everyone}
            phases: list[tuple[str, Callable[[], None]]] = [
                ("throughput", lambda o=order, v=round_values: bench.throughput(o, v)),
                ("exchange", lambda o=order, v=round_values: bench.exchange(o, v)),
                ("idle", lambda o=order, v=round_values: bench.idle(o, v)),
                ("busy", lambda o=order, v=round_values: bench.busy(o, v)),
                ("storm", lambda o=order, v=round_values, r=round_: bench.storm(o, v, r)),
            ]
            for name, phase in phases:
                if name in args.only:
                    bench.guarded(f"round {round_ + 1} {name}", phase)
            for subject in everyone:
                subject.values.append(round_values[subject.name])

        if "workers" in args.only and not args.proxy:
            if serve_supports("--workers"):
                workers_note = (
                    bench.guarded("workers", lambda: measure_workers(bench, subjects[0], plan))
                    or "failed (see the notes)"
                )
            else:
                workers_note = "not available: `socksauth serve --help` shows no --workers"
            bench.notes.append(f"workers: {workers_note}")

        report = {
            "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "seconds": time.monotonic() - started,
            "plan": asdict(plan),
            "host": {
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                "platform": platform.platform(),
                "commit": _git_commit(),
                "rlimit_nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
            },
            "server_args": SERVER_ARGS,
            "notes": [
                *bench.notes,
                "client, peers and proxy share the machine's cores; ratios are to the direct "
                "run of the same round",
            ],
            "direct": direct.values,
            "subjects": {},
        }
        for subject in measured:
            rows = summarise(subject, direct, plan)
            report["subjects"][subject.name] = {"rows": rows, "rounds": subject.values}
            print_table(subject.name, rows, plan.rounds)
        if reference is not None:
            report["reference"] = reference.values
            for subject in subjects:
                print_versus_reference(subject, reference)
        by_name = {subject.name: subject for subject in subjects}
        for name in list(by_name):
            if name.endswith("-interim-on") and name[:-3] + "-off" in by_name:
                print_versus_reference(
                    by_name[name],
                    by_name[name[:-3] + "-off"],
                    f"interim updates every {args.interim_compare:g} s, on ÷ off",
                )
        for note in report["notes"]:
            print(f"note: {note}")
        path = args.json or (
            Path(__file__).resolve().parent
            / "results"
            / f"{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1, default=str))
        print(f"\nsaved {path} ({report['seconds']:.0f} s)")
        return 0
    finally:
        for subject in subjects:
            if subject.server is not None:
                subject.server.stop()
            if subject.database is not None:
                subject.database.close()
        for server in references:
            server.stop()
        for child in children:
            child.close()
        if args.keep:
            print(f"work directory kept: {workdir}", file=log)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def measure_workers(bench: Bench, template: Subject, plan: Plan) -> str:
    """8-tunnel upload and the exchange at 128 clients with --workers 1 and --workers 2."""
    assert template.database is not None
    servers = []
    try:
        for workers in (1, 2):
            server = Server(
                template.database, f"workers{workers}", [*_server_args(), f"--workers={workers}"]
            )
            server.start()
            servers.append(server)
        values: list[dict[str, float]] = []
        for round_ in range(plan.rounds):
            figures: dict[str, float] = {}
            order = [0, 1] if round_ % 2 == 0 else [1, 0]
            for index in order:
                route = Route(servers[index].address, "bench", PASSWORD)
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


def _git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent,
            timeout=10,
        ).stdout.strip()
    except OSError:
        return ""


if __name__ == "__main__":
    sys.exit(main())
