"""AuditLog against a real database: batching, coalescing, outages, spill file, replay, restart."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from audit_helpers import failed_login, finished, opened, outage, quick_failing_engine
from e2e import eventually
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.audit import AuditLog, new_entry_id
from socksauth.connection_record import Outcome
from socksauth.store import migrate
from socksauth.store.audit import SqlAuditStore
from socksauth.store.database import create_engine
from socksauth.store.interfaces import AuditEntry, AuditQuery
from socksauth.store.models import AuditRow


@pytest.fixture
async def store_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """A migrated database whose writers give up quickly when it is locked."""
    engine = quick_failing_engine(database_url)
    try:
        await migrate.upgrade(engine)
        yield engine
    finally:
        await engine.dispose()


@pytest.fixture
def spill_path(tmp_path: Path) -> Path:
    return tmp_path / "spill" / "audit-spill.jsonl"


def audit_log(engine: AsyncEngine, spill_path: Path, **options: Any) -> AuditLog:
    defaults: dict[str, Any] = {
        "node": "node-a",
        "spill_path": spill_path,
        "flush_interval_seconds": 0.05,
        "retry_max_seconds": 0.2,
        "shutdown_timeout_seconds": 5.0,
    }
    defaults.update(options)
    return AuditLog(SqlAuditStore(engine), **defaults)


async def rows(engine: AsyncEngine) -> list[AuditEntry]:
    return list(await SqlAuditStore(engine).find_entries(AuditQuery(limit=None)))


async def count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(AuditRow))).scalar_one())


def spill_lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


async def test_a_full_batch_is_written_without_waiting_for_the_interval(
    store_engine: AsyncEngine, spill_path: Path
) -> None:
    async with audit_log(
        store_engine, spill_path, batch_size=5, flush_interval_seconds=60.0
    ) as log:
        for _ in range(5):
            log.record(finished(opened()))
        await eventually(lambda: log.written == 5, what="a full batch written")
        assert await count(store_engine) == 5


async def test_entries_are_written_within_the_flush_interval(
    store_engine: AsyncEngine, spill_path: Path
) -> None:
    async with audit_log(store_engine, spill_path, flush_interval_seconds=0.1) as log:
        log.record(failed_login("mallory"))
        await eventually(lambda: log.written == 1, what="one entry written")
        assert [entry.username for entry in await rows(store_engine)] == ["mallory"]


async def test_an_open_and_close_within_one_window_become_one_finished_row(
    store_engine: AsyncEngine, spill_path: Path
) -> None:
    async with audit_log(store_engine, spill_path, flush_interval_seconds=60.0) as log:
        entry = opened()
        log.record(entry)
        log.record(finished(entry))
        assert await log.flush()
        assert (log.queued, log.coalesced, log.written) == (2, 1, 1)
        assert await rows(store_engine) == [finished(entry)]


async def test_a_row_exists_while_open_and_is_completed_on_close(
    store_engine: AsyncEngine, spill_path: Path
) -> None:
    async with audit_log(store_engine, spill_path) as log:
        entry = opened()
        log.record(entry)
        await eventually(lambda: log.written == 1, what="the open row written")
        assert (await rows(store_engine))[0].is_open
        log.record(finished(entry))
        await eventually(lambda: log.written == 2, what="the row completed")
        assert await rows(store_engine) == [finished(entry)]


async def test_leaving_the_context_writes_everything_still_queued(
    store_engine: AsyncEngine, spill_path: Path
) -> None:
    async with audit_log(store_engine, spill_path, flush_interval_seconds=60.0) as log:
        for _ in range(1234):
            log.record(finished(opened()))
    assert await count(store_engine) == 1234
    assert log.written == 1234 and log.buffered == 0


async def test_an_outage_keeps_entries_in_memory_and_writes_them_when_it_ends(
    database_url: str, store_engine: AsyncEngine, spill_path: Path
) -> None:
    async with audit_log(store_engine, spill_path) as log:
        async with outage(database_url):
            for _ in range(50):
                log.record(finished(opened()))
            await eventually(lambda: log.failing, what="the writer notices the outage")
            assert log.write_errors >= 1
            assert log.buffered == 50
            assert log.written == 0
        await eventually(lambda: log.written == 50 and not log.failing, what="recovery")
        assert log.buffered == 0 and log.spilled == 0
        assert await count(store_engine) == 50


async def test_past_the_memory_limit_entries_spill_to_a_file_and_are_replayed(
    database_url: str, store_engine: AsyncEngine, spill_path: Path
) -> None:
    async with audit_log(store_engine, spill_path, batch_size=10, memory_limit=20) as log:
        async with outage(database_url):
            entries = [finished(opened()) for _ in range(100)]
            for entry in entries:
                log.record(entry)
            # Spilled entries leave memory before the file write completes: wait for both.
            await eventually(
                lambda: log.buffered < 20 and log.spilled + log.buffered == 100,
                what="entries spilled",
            )
            assert log.spilled == spill_lines(spill_path) == log.spill_pending
        await eventually(lambda: log.spill_pending == 0 and log.buffered == 0, what="replay")
        assert not spill_path.exists()
        assert {entry.id for entry in await rows(store_engine)} == {e.id for e in entries}
        assert log.replayed == log.spilled


async def test_entries_unwritten_at_shutdown_wait_in_the_spill_file_for_the_next_start(
    database_url: str, store_engine: AsyncEngine, spill_path: Path
) -> None:
    entries = [finished(opened()) for _ in range(30)]
    async with outage(database_url):
        log = audit_log(store_engine, spill_path, shutdown_timeout_seconds=0.5)
        # Started during the outage: the first write (before serving) fails, and that is
        # survived too.
        async with log:
            for entry in entries:
                log.record(entry)
        assert spill_lines(spill_path) == 30
        assert "password" not in spill_path.read_text()
    async with audit_log(store_engine, spill_path) as restarted:
        assert restarted.replayed == 30
    assert not spill_path.exists()
    assert {entry.id for entry in await rows(store_engine)} == {e.id for e in entries}


async def test_rows_left_open_by_a_previous_run_of_this_node_become_interrupted(
    store_engine: AsyncEngine, spill_path: Path
) -> None:
    ours, theirs = opened(node="node-a"), opened(node="node-b")
    await SqlAuditStore(store_engine).write_batch([ours, theirs])
    async with audit_log(store_engine, spill_path, node="node-a") as log:
        current = opened(node="node-a")
        log.record(current)
        assert await log.flush()
    by_id = {entry.id: entry for entry in await rows(store_engine)}
    assert (
        by_id[ours.id].outcome == Outcome.INTERRUPTED.value and by_id[ours.id].ended_at is not None
    )
    assert by_id[theirs.id].is_open
    assert by_id[current.id].is_open  # this run's own open row is not touched


async def test_a_torn_line_in_the_spill_file_is_skipped_and_the_rest_replayed(
    store_engine: AsyncEngine, spill_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = [finished(opened()) for _ in range(2)]
    spill_path.parent.mkdir(parents=True)
    with spill_path.open("w") as file:
        for entry in good:
            values = {name: getattr(entry, name) for name in entry.__dataclass_fields__}
            values["id"] = entry.id.hex
            values["started_at"] = entry.started_at.isoformat()
            values["ended_at"] = entry.ended_at.isoformat() if entry.ended_at else None
            file.write(json.dumps(values) + "\n")
        file.write('{"id": "0190')
    async with audit_log(store_engine, spill_path):
        pass
    assert {entry.id for entry in await rows(store_engine)} == {e.id for e in good}
    assert "unreadable line" in caplog.text


def test_entry_ids_are_unique_uuid7_and_ordered_by_time() -> None:
    ids = [new_entry_id() for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    assert all(entry_id.version == 7 for entry_id in ids)
    milliseconds = [entry_id.int >> 80 for entry_id in ids]
    assert milliseconds == sorted(milliseconds)


def test_record_never_blocks_or_raises_without_a_running_writer(spill_path: Path) -> None:
    # The engine never connects: nothing is written while no writer task runs.
    engine = create_engine(f"sqlite+aiosqlite:///{spill_path.parent / 'never.sqlite3'}")
    log = AuditLog(SqlAuditStore(engine), node="n", spill_path=spill_path)
    for _ in range(1000):
        log.record(finished(opened()))
    assert log.queued == 1000 and log.buffered == 1000
