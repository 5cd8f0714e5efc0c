"""MetricsObserver: counts each client's ConnectionRecord into the Prometheus metrics; the
audit's queue read into them periodically."""

from __future__ import annotations

import asyncio
import time

from socksauth.audit import AuditLog
from socksauth.auth.throttle import Failure
from socksauth.connection_record import ConnectionRecord, Outcome
from socksauth.metrics import Metrics
from socksauth.protocol import Reply

# How often the audit's counters are copied into the metrics: in multi-process mode the
# worker that answers a scrape cannot read another worker's AuditLog, only its metric files.
AUDIT_SAMPLE_SECONDS = 1.0


_FAILED_LOGINS = frozenset({Outcome.AUTH_FAILED, Outcome.THROTTLED, Outcome.LOCKED_OUT})


class MetricsObserver:
    """A ConnectionObserver that counts: O(1) per connection, nothing per byte (the relay's
    byte counters are added once, when the connection ends)."""

    __slots__ = ("_metrics", "_open")

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        # id() of each record whose tunnel is counted open: BIND replies twice, and only
        # the first reply ends the handshake. A record lives until finished() is called.
        self._open: set[int] = set()

    def opened(self, record: ConnectionRecord) -> None:
        """The first successful reply: the handshake is over and a tunnel is open."""
        if id(record) in self._open or record.command is None:
            return
        self._open.add(id(record))
        self._metrics.handshake_duration.observe(time.monotonic() - record.started)
        self._metrics.tunnels_active.labels(_command(record)).inc()

    def finished(self, record: ConnectionRecord) -> None:
        metrics = self._metrics
        if id(record) in self._open:
            self._open.discard(id(record))
            metrics.tunnels_active.labels(_command(record)).dec()
        elif record.reply is not None and record.reply is not Reply.SUCCEEDED:
            # A refusal: the connection is closed right after its reply, so the whole
            # connection is (to a few microseconds) the handshake.
            metrics.handshake_duration.observe(record.duration_seconds)
        if record.outcome in _FAILED_LOGINS:
            metrics.failed_logins.inc()
        metrics.connections_by_protocol.labels(record.protocol.value).inc()
        if record.requests:
            metrics.http_requests.inc(record.requests)
        if metrics.per_user:
            user = _user(record)
            metrics.connections.labels(record.outcome.value, user).inc()
            if record.bytes_from_client:
                metrics.bytes_from_client.labels(user).inc(record.bytes_from_client)
            if record.bytes_to_client:
                metrics.bytes_to_client.labels(user).inc(record.bytes_to_client)
        else:
            metrics.connections.labels(record.outcome.value).inc()
            if record.bytes_from_client:
                metrics.bytes_from_client.inc(record.bytes_from_client)
            if record.bytes_to_client:
                metrics.bytes_to_client.inc(record.bytes_to_client)


def _command(record: ConnectionRecord) -> str:
    assert record.command is not None
    # As the audit spells it: connect, bind, udp_associate.
    return record.command.name.lower()


def _user(record: ConnectionRecord) -> str:
    """The account, once it has logged in; "" otherwise. A name a client merely sent (a
    failed login) is never a label: anyone could create series without end."""
    if record.command is None or record.username is None:
        return ""
    # Names arrive as bytes decoded with surrogateescape; the exposition is UTF-8.
    return record.username.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


class AuditSampler:
    """Copies the AuditLog's queue depth and spill count into the metrics."""

    __slots__ = ("_audit_log", "_metrics", "_spilled")

    def __init__(self, metrics: Metrics, audit_log: AuditLog) -> None:
        self._metrics = metrics
        self._audit_log = audit_log
        self._spilled = 0

    def sample(self) -> None:
        """Now: the gauge set, the counter moved by what was spilled since the last call."""
        self._metrics.audit_queue_depth.set(self._audit_log.buffered)
        spilled = self._audit_log.spilled
        if spilled > self._spilled:
            self._metrics.audit_spilled.inc(spilled - self._spilled)
            self._spilled = spilled

    async def run(self, interval_seconds: float = AUDIT_SAMPLE_SECONDS) -> None:
        """Sample every ``interval_seconds`` until cancelled."""
        while True:
            self.sample()
            await asyncio.sleep(interval_seconds)


class ThrottleMetrics:
    """A ThrottleObserver that counts into the metrics."""

    __slots__ = ("_metrics",)

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def failed(self, reason: Failure) -> None:
        self._metrics.login_failures.labels(reason.value).inc()

    def delayed(self, seconds: float) -> None:
        self._metrics.login_delay.observe(seconds)

    def lockout_started(self) -> None:
        self._metrics.login_lockouts.inc()

    def locked_now(self, count: int) -> None:
        self._metrics.login_locked.set(count)

    def store_error(self) -> None:
        self._metrics.throttle_store_errors.inc()
