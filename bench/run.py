"""The socksauth benchmark (issue #5): one command, figures beside a direct baseline.

    python -m bench.run [--store sqlite|postgresql|both] [--rounds 3] [--quick] [--only ...]
    python -m bench.run --proxy 127.0.0.1:1080 --user U --password P   # any SOCKS5 server

Processes: this one orchestrates and reads /proc; the local peers (sink, source, echo) run in
one process, the load generators in two others, the proxy in its own. On a small machine
they all share the same cores, so the direct baseline and the proxy are measured the same way
(interleaved, in the same round) and the figures that matter are the ratios.

The parts: `plan.py` (counts and durations), `children.py` (the helper processes),
`scenarios.py` (the subjects and the phases), `rounds.py` (warm-up and interleaved rounds),
`report.py` (rows, ratios, tables, the JSON file); this module starts the subjects.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # `python bench/run.py`
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import load, peers
from bench.children import Child
from bench.plan import FULL, METRICS, QUICK, Plan
from bench.reference import ReferenceServer
from bench.report import build_report, print_report, save_report
from bench.rounds import run_rounds, warm_up
from bench.scenarios import Bench, Subject, measure_workers
from bench.socks5 import Route
from bench.target import (
    DEFAULT_PG_ADMIN,
    Database,
    Server,
    make_workdir,
    raise_nofile,
    serve_supports,
)

PASSWORD = "bench-" + secrets.token_hex(8)


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


def start_socksauth(
    args: argparse.Namespace, plan: Plan, workdir: Path, bench: Bench, subjects: list[Subject]
) -> None:
    """A socksauth server per store, and with --interim-compare two more on each; each
    subject is in ``subjects`` as soon as it has something to stop."""
    stores = ["sqlite", "postgresql"] if args.store == "both" else [args.store]
    for store in stores:
        bench.say(f"setting up {store} …")
        database = Database(store, workdir, pg_admin=args.pg_admin)
        database.create()
        subject = Subject(store, Route(None, "bench", PASSWORD), database=database)
        subjects.append(subject)
        database.add_user("bench", PASSWORD)
        if "storm" in args.only:
            subject.storm_users = [
                [f"storm{r}_{i:04d}" for i in range(plan.storm_users)] for r in range(plan.rounds)
            ]
            database.add_users_fast([u for users in subject.storm_users for u in users], PASSWORD)
        _start_server(subject, database, bench.server_args)
        if args.interim_compare is not None:
            # Same database, own node names: each server's audit rows stay its own.
            for suffix, seconds in (("on", args.interim_compare), ("off", 0.0)):
                extra = Subject(f"{store}-interim-{suffix}", Route(None, "bench", PASSWORD))
                _start_server(
                    extra,
                    database,
                    [
                        *bench.server_args,
                        f"--audit-interim-interval={seconds:g}",
                        f"--node-name=bench-interim-{suffix}",
                    ],
                )
                subjects.append(extra)


def _start_server(subject: Subject, database: Database, server_args: list[str]) -> None:
    subject.server = Server(database, subject.name, server_args)
    subject.server.start()
    subject.pid = subject.server.pid
    subject.route = Route(subject.server.address, "bench", PASSWORD)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.rounds:
        plan = Plan(**{**asdict(plan), "rounds": args.rounds})
    started = time.monotonic()
    raise_nofile()
    workdir = make_workdir()
    children: list[Child] = []
    subjects: list[Subject] = []
    references: list[ReferenceServer] = []
    try:
        peer = Child(peers.main, "bench-peers")
        children.append(peer)
        ports = peer.conn.recv()
        clients = [Child(load.main, "bench-load"), Child(load.main, "bench-load-2")]
        children += clients
        bench = Bench(plan, ports, clients, sys.stderr, args.server_arg)
        direct = Subject("direct", Route())
        reference: Subject | None = None
        if not args.no_reference:
            references.append(ReferenceServer("bench", PASSWORD))
            reference = Subject(
                "reference",
                Route(references[0].address, "bench", PASSWORD),
                pid=references[0].pid,
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
            start_socksauth(args, plan, workdir, bench, subjects)
        measured = [*subjects, *([reference] if reference else [])]
        warm_up(bench, [direct, *measured])
        run_rounds(bench, [direct, *measured], args.only)
        if "workers" in args.only and not args.proxy:
            bench.notes.append(f"workers: {_measure_workers(bench, subjects[0], plan)}")
        report = build_report(
            plan,
            time.monotonic() - started,
            args.server_arg,
            bench.notes,
            direct,
            measured,
            reference,
        )
        print_report(report, subjects, reference, args.interim_compare)
        save_report(report, args.json)
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
            print(f"work directory kept: {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _measure_workers(bench: Bench, template: Subject, plan: Plan) -> str:
    if not serve_supports("--workers"):
        return "not available: `socksauth serve --help` shows no --workers"
    return (
        bench.guarded("workers", lambda: measure_workers(bench, template, plan))
        or "failed (see the notes)"
    )


if __name__ == "__main__":
    sys.exit(main())
