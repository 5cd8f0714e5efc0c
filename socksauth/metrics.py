"""Prometheus metrics: the metric objects of one process and their exposition, single- or
multi-process (``serve --workers``)."""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)

# prometheus_client's own variable: where each process keeps its values in mmap'ed files.
MULTIPROCESS_DIRECTORY_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

# Accept → the request's first reply: a login costs an argon2 verification (tens of ms), a
# CONNECT adds a DNS lookup and a TCP handshake, up to connect_timeout_seconds.
HANDSHAKE_BUCKETS_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


# A throttle delay: 0.5 s doubling to its 4 s cap by default; longer only when configured.
LOGIN_DELAY_BUCKETS_SECONDS = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0)


def use_multiprocess_directory(directory: Path) -> None:
    """From now on, metric values of this process and of the processes it forks live in
    ``directory``, where any of them can read all of them (a supervisor calls this before
    forking its workers).

    prometheus_client picks its value class once, at import, from the environment variable;
    socksauth imports it before the supervisor knows it will fork, so the choice is made
    again here. Metrics created before this call keep their in-process values.
    """
    os.environ[MULTIPROCESS_DIRECTORY_VARIABLE] = str(directory)
    # (prometheus_client leaves these three functions unannotated)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def forget_process(directory: Path, pid: int) -> None:
    """A worker has exited: its gauges (tunnels open, audit queue) no longer count; its
    counters stay, as totals must not go down."""
    multiprocess.mark_process_dead(pid, str(directory))  # type: ignore[no-untyped-call]


def multiprocess_directory() -> Path | None:
    """The directory of multi-process mode, or None: values are this process's own."""
    directory = os.environ.get(MULTIPROCESS_DIRECTORY_VARIABLE)
    return Path(directory) if directory else None


class Metrics:
    """Every metric socksauth exports, in a registry of its own (one per running server, so
    tests can run many servers in one process).

    With ``per_user``, connections and bytes carry a ``user`` label: one series per account
    that has logged in, which is why it is opt-in.
    """

    def __init__(self, *, per_user: bool = False) -> None:
        self.per_user = per_user
        self.registry = CollectorRegistry(auto_describe=True)
        user = ("user",) if per_user else ()
        registry = self.registry
        self.tunnels_active = Gauge(
            "socksauth_tunnels_active",
            "Tunnels (connect), bindings (bind) and associations (udp_associate) open now.",
            ["command"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.connections = Counter(
            "socksauth_connections",
            "Client connections ended, by how they ended (the audit's outcome).",
            ["outcome", *user],
            registry=registry,
        )
        self.connections_by_protocol = Counter(
            "socksauth_connections_by_protocol",
            "Client connections ended, by what they spoke on the shared port (socks5, http).",
            ["protocol"],
            registry=registry,
        )
        self.http_requests = Counter(
            "socksauth_http_requests",
            "Absolute-form http:// requests forwarded to their origin (CONNECT not counted).",
            registry=registry,
        )
        self.failed_logins = Counter(
            "socksauth_failed_logins",
            "Username/password logins refused (unknown user, wrong password, disabled).",
            registry=registry,
        )
        self.bytes_from_client = Counter(
            "socksauth_bytes_from_client",
            "Bytes relayed from clients to targets, counted when each connection ends.",
            user,
            registry=registry,
        )
        self.bytes_to_client = Counter(
            "socksauth_bytes_to_client",
            "Bytes relayed from targets to clients, counted when each connection ends.",
            user,
            registry=registry,
        )
        self.handshake_duration = Histogram(
            "socksauth_handshake_duration_seconds",
            "From accepting a client to sending the reply to its request.",
            registry=registry,
            buckets=HANDSHAKE_BUCKETS_SECONDS,
        )
        self.audit_queue_depth = Gauge(
            "socksauth_audit_queue_depth",
            "Audit entries waiting in memory to be written to the database.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.audit_spilled = Counter(
            "socksauth_audit_spilled",
            "Audit entries written to the local spill file (the database was unavailable).",
            registry=registry,
        )
        self.database_errors = Counter(
            "socksauth_database_errors",
            "Errors raised by the database or by connecting to it.",
            registry=registry,
        )

        self.login_failures = Counter(
            "socksauth_login_failures",
            "Failed logins by reason: wrong_password, unknown_user, unusable_account (counted "
            "by the throttle), repeated_password (not counted), locked_out, too_many_delayed, "
            "queued_behind_failures (refused unverified).",
            ["reason"],
            registry=registry,
        )
        self.login_lockouts = Counter(
            "socksauth_login_lockouts",
            "Lockouts of a (username, address) pair started by this process.",
            registry=registry,
        )
        self.login_locked = Gauge(
            "socksauth_login_locked_pairs",
            "(username, address) pairs locked out now, as this process knows them (shared "
            "through the store, so the maximum over processes, not their sum).",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.login_delay = Histogram(
            "socksauth_login_delay_seconds",
            "Throttle delays imposed on logins before verifying them.",
            registry=registry,
            buckets=LOGIN_DELAY_BUCKETS_SECONDS,
        )
        self.throttle_store_errors = Counter(
            "socksauth_throttle_store_errors",
            "Reads or writes of the shared throttle state that failed or were too slow (the "
            "process kept its own counters meanwhile).",
            registry=registry,
        )

    def exposition(self) -> tuple[bytes, str]:
        """(the text format of every metric, its content type); in multi-process mode the
        values of every process, live or dead, summed as each metric's mode says."""
        directory = multiprocess_directory()
        if directory is None:
            return generate_latest(self.registry), CONTENT_TYPE_LATEST
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, str(directory))  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
