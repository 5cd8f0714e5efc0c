"""The audit's queue depth, spill count and the database errors behind them, as metrics, through
a real database outage."""

from __future__ import annotations

from pathlib import Path

from audit_helpers import finished, opened, outage, quick_failing_engine
from e2e import eventually
from prometheus_client.parser import text_string_to_metric_families

from socksauth.audit import AuditLog
from socksauth.metrics import Metrics
from socksauth.server.metrics import AuditSampler
from socksauth.store import migrate
from socksauth.store.audit import SqlAuditStore
from socksauth.store.database import on_database_error


def sample_values(metrics: Metrics) -> dict[str, float]:
    body, _ = metrics.exposition()
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(body.decode())
        for sample in family.samples
    }


async def test_queue_depth_spills_and_database_errors_follow_an_outage(
    database_url: str, tmp_path: Path
) -> None:
    engine = quick_failing_engine(database_url)
    try:
        await migrate.upgrade(engine)
        metrics = Metrics()
        on_database_error(engine, metrics.database_errors.inc)
        audit = AuditLog(
            SqlAuditStore(engine),
            node="node-a",
            spill_path=tmp_path / "audit-spill.jsonl",
            batch_size=10,
            memory_limit=20,
            flush_interval_seconds=0.05,
            retry_max_seconds=0.2,
            shutdown_timeout_seconds=5.0,
        )
        sampler = AuditSampler(metrics, audit)
        async with audit:
            sampler.sample()
            assert sample_values(metrics)["socksauth_audit_queue_depth"] == 0
            assert sample_values(metrics)["socksauth_database_errors_total"] == 0
            async with outage(database_url):
                audit.record(finished(opened()))
                await eventually(lambda: audit.failing, what="the writer notices the outage")
                for _ in range(99):
                    audit.record(finished(opened()))
                await eventually(
                    lambda: audit.buffered < 20 and audit.spilled + audit.buffered == 100,
                    what="entries spilled",
                )
                sampler.sample()
                during = sample_values(metrics)
                assert during["socksauth_audit_spilled_total"] == audit.spilled > 0
                assert during["socksauth_audit_queue_depth"] == audit.buffered
                assert during["socksauth_database_errors_total"] >= audit.write_errors >= 1
            await eventually(
                lambda: audit.spill_pending == 0 and audit.buffered == 0, what="replay"
            )
            sampler.sample()
            after = sample_values(metrics)
            # A counter: what was spilled stays counted after the replay.
            assert after["socksauth_audit_spilled_total"] == audit.spilled
            assert after["socksauth_audit_queue_depth"] == 0
    finally:
        await engine.dispose()
