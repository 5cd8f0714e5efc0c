"""The benchmark's report: which figures are compared with what and gated how (`Row`), their
medians and ratios over the rounds, and the tables printed."""

from __future__ import annotations

import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.plan import Plan
from bench.scenarios import Subject


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


def build_report(
    plan: Plan,
    seconds: float,
    server_args: list[str],
    notes: list[str],
    direct: Subject,
    measured: list[Subject],
    reference: Subject | None,
) -> dict[str, Any]:
    """Everything, per round, for the JSON file: the plan, the host, the notes, and each
    subject's rows."""
    report: dict[str, Any] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seconds": seconds,
        "plan": asdict(plan),
        "host": {
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "commit": _git_commit(),
            "rlimit_nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        },
        "server_args": server_args,
        "notes": [
            *notes,
            "client, peers and proxy share the machine's cores; ratios are to the direct "
            "run of the same round",
        ],
        "direct": direct.values,
        "subjects": {
            subject.name: {"rows": summarise(subject, direct, plan), "rounds": subject.values}
            for subject in measured
        },
    }
    if reference is not None:
        report["reference"] = reference.values
    return report


def print_report(
    report: dict[str, Any],
    subjects: list[Subject],
    reference: Subject | None,
    interim_compare: float | None,
) -> None:
    """One table per measured subject, socksauth beside the reference and, with
    --interim-compare, interim updates on beside off; then the notes."""
    rounds = report["plan"]["rounds"]
    for name, summary in report["subjects"].items():
        print_table(name, summary["rows"], rounds)
    if reference is not None:
        for subject in subjects:
            print_versus_reference(subject, reference)
    by_name = {subject.name: subject for subject in subjects}
    for name in list(by_name):
        if name.endswith("-interim-on") and name[:-3] + "-off" in by_name:
            print_versus_reference(
                by_name[name],
                by_name[name[:-3] + "-off"],
                f"interim updates every {interim_compare:g} s, on ÷ off",
            )
    for note in report["notes"]:
        print(f"note: {note}")


def save_report(report: dict[str, Any], path: Path | None) -> None:
    """Written to ``path``, by default bench/results/<timestamp>.json."""
    path = path or (
        Path(__file__).resolve().parent
        / "results"
        / f"{datetime.datetime.now():%Y%m%d-%H%M%S}.json"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report, indent=1, default=str))
    print(f"\nsaved {path} ({report['seconds']:.0f} s)")


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
