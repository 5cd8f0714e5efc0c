"""The audit's spill file cannot grow (a file-size limit: what a full disk does to a writer)
while the database is down: entries stay in memory, one line says so, none is lost."""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from audit_helpers import finished, opened, outage, quick_failing_engine
from conftest import Lines
from e2e import eventually

from socksauth.audit import AuditLog
from socksauth.store import migrate
from socksauth.store.audit import SqlAuditStore
from socksauth.store.interfaces import AuditQuery

ENTRIES = 600
FILE_LIMIT_BYTES = 64 * 1024  # about 150 entries fit


@contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """RLIMIT_FSIZE for this process: a write past ``limit`` fails with EFBIG (Python
    ignores SIGXFSZ), as a write to a full disk fails with ENOSPC."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


# PostgreSQL only: a growing SQLite file would hit the limit too.
@pytest.mark.parametrize(
    "database_url", [pytest.param("postgresql", marks=pytest.mark.postgres)], indirect=True
)
async def test_a_full_spill_disk_keeps_entries_in_memory_with_one_line_and_loses_none(
    database_url: str, tmp_path: Path, lines: Lines
) -> None:
    engine = quick_failing_engine(database_url)
    spill_path = tmp_path / "audit-spill.jsonl"
    entries = [finished(opened()) for _ in range(ENTRIES)]
    try:
        await migrate.upgrade(engine)
        async with AuditLog(
            SqlAuditStore(engine),
            node="node-disk-full",
            spill_path=spill_path,
            batch_size=10,
            memory_limit=50,
            flush_interval_seconds=0.05,
            retry_max_seconds=0.2,
        ) as audit:
            lines.records.clear()
            async with outage(database_url):
                with file_size_limit(FILE_LIMIT_BYTES):
                    for entry in entries:
                        audit.record(entry)
                        await asyncio.sleep(0.002)
                    await eventually(
                        lambda: audit.buffered + audit.spilled >= ENTRIES,
                        what="every entry in memory or in the file",
                    )
                    size = spill_path.stat().st_size
                    buffered = audit.buffered
            await eventually(
                lambda: audit.buffered == 0 and audit.spill_pending == 0,
                timeout=30,
                what="everything written once the database is back",
            )
        stored = await SqlAuditStore(engine).find_entries(
            AuditQuery(limit=None, username=entries[0].username)
        )
    finally:
        await engine.dispose()
    messages = lines.messages(logging.WARNING)
    spill_lines = [m for m in messages if "spill file" in m]
    print(
        f"\nspill file limited to {FILE_LIMIT_BYTES} bytes during an outage: file {size} bytes, "
        f"{buffered} entries kept in memory, {len(messages)} warning lines "
        f"({len(spill_lines)} about the spill file), {len(lines.tracebacks())} tracebacks; "
        f"{len({e.id for e in stored} & {e.id for e in entries})} of {ENTRIES} rows written"
    )
    for message in messages:
        print("   ", message)
    assert size <= FILE_LIMIT_BYTES
    assert buffered > 0, "the limit did not keep anything in memory"
    assert {e.id for e in entries} <= {e.id for e in stored}, "audit entries lost"
    assert lines.tracebacks() == []
    assert sum("writing the spill file" in m and "failed" in m for m in messages) == 1
    assert len(messages) <= 12, messages
