"""SqlAuditStore on both databases: idempotent batched upserts, crash recovery, queries, prune."""

from __future__ import annotations

from datetime import timedelta

from audit_helpers import T0, failed_login, finished, opened
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.connection_record import Outcome
from socksauth.store.audit import SqlAuditStore
from socksauth.store.interfaces import OPEN, AuditQuery, SortOrder
from socksauth.store.models import AuditRow


async def count_rows(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(AuditRow))).scalar_one())


async def test_an_open_entry_is_a_row_without_end_and_its_completion_fills_it(
    engine: AsyncEngine,
) -> None:
    store = SqlAuditStore(engine)
    entry = opened()
    await store.write_batch([entry])
    (row,) = await store.find_entries(AuditQuery())
    assert row == entry
    assert row.ended_at is None and row.outcome is None

    done = finished(entry, seconds=3.5, bytes_from_client=12, bytes_to_client=34)
    await store.write_batch([done])
    assert await store.find_entries(AuditQuery()) == [done]


async def test_writing_a_batch_twice_leaves_one_row_per_entry(engine: AsyncEngine) -> None:
    store = SqlAuditStore(engine)
    batch = [opened(), finished(opened()), failed_login("mallory")]
    await store.write_batch(batch)
    await store.write_batch(batch)
    assert await count_rows(engine) == 3


async def test_a_late_open_entry_does_not_reopen_a_completed_row(engine: AsyncEngine) -> None:
    store = SqlAuditStore(engine)
    entry = opened()
    done = finished(entry)
    await store.write_batch([done])
    await store.write_batch([entry])
    assert await store.find_entries(AuditQuery()) == [done]


async def test_a_completion_without_its_open_row_inserts_the_whole_row(
    engine: AsyncEngine,
) -> None:
    store = SqlAuditStore(engine)
    done = finished(opened())
    await store.write_batch([done])
    assert await store.find_entries(AuditQuery()) == [done]


async def test_batches_larger_than_one_statement_are_written_whole(engine: AsyncEngine) -> None:
    store = SqlAuditStore(engine)
    entries = [opened(started_at=T0 + timedelta(milliseconds=i)) for i in range(2500)]
    await store.write_batch(entries)
    await store.write_batch([finished(entry) for entry in entries[:1500]])
    assert await count_rows(engine) == 2500
    still_open = await store.find_entries(AuditQuery(outcome=OPEN, limit=None))
    assert len(still_open) == 1000


async def test_close_interrupted_closes_only_this_nodes_rows_started_before(
    engine: AsyncEngine,
) -> None:
    store = SqlAuditStore(engine)
    ours_old = opened(node="node-a", started_at=T0)
    ours_new = opened(node="node-a", started_at=T0 + timedelta(hours=2))
    theirs = opened(node="node-b", started_at=T0)
    ours_done = finished(opened(node="node-a", started_at=T0))
    await store.write_batch([ours_old, ours_new, theirs, ours_done])

    assert await store.close_interrupted("node-a", T0 + timedelta(hours=1)) == 1

    by_id = {entry.id: entry for entry in await store.find_entries(AuditQuery())}
    assert by_id[ours_old.id].outcome == Outcome.INTERRUPTED.value
    assert by_id[ours_old.id].ended_at == T0 + timedelta(hours=1)
    assert by_id[ours_new.id].is_open
    assert by_id[theirs.id].is_open
    assert by_id[ours_done.id] == ours_done


async def test_find_entries_filters_by_user_period_target_and_outcome(
    engine: AsyncEngine,
) -> None:
    store = SqlAuditStore(engine)
    early = finished(opened("alice", started_at=T0, target_host="early.example"))
    late = finished(opened("alice", started_at=T0 + timedelta(days=1), target_host="100%.test"))
    bob = opened("bob", started_at=T0 + timedelta(hours=1), target_host="bob.example")
    failure = failed_login("mallory", started_at=T0 + timedelta(hours=2))
    await store.write_batch([early, late, bob, failure])

    async def ids(**filters: object) -> list[object]:
        return [entry.id for entry in await store.find_entries(AuditQuery(**filters))]  # type: ignore[arg-type]

    assert await ids() == [late.id, failure.id, bob.id, early.id]
    assert await ids(order=SortOrder.OLDEST_FIRST) == [early.id, bob.id, failure.id, late.id]
    assert await ids(username="alice") == [late.id, early.id]
    assert await ids(since=T0 + timedelta(minutes=30)) == [late.id, failure.id, bob.id]
    assert await ids(until=T0 + timedelta(hours=1)) == [early.id]
    assert await ids(target="example") == [bob.id, early.id]
    # LIKE wildcards in the filter are taken literally.
    assert await ids(target="0%.") == [late.id]
    assert await ids(target="_") == []
    # The dialled address matches too.
    assert await ids(target="93.184.215.14") == [late.id, bob.id, early.id]
    assert await ids(outcome="auth_failed") == [failure.id]
    assert await ids(outcome=OPEN) == [bob.id]
    assert await ids(limit=2) == [late.id, failure.id]


async def test_user_stats_count_connections_failures_bytes_and_time(engine: AsyncEngine) -> None:
    store = SqlAuditStore(engine)
    alice = [
        finished(opened("alice", started_at=T0 + timedelta(minutes=i)), seconds=1.5 * (i + 1),
                 bytes_from_client=10 * i, bytes_to_client=1000 + i)
        for i in range(3)
    ]  # fmt: skip
    bob_open = opened("bob", started_at=T0 + timedelta(hours=3))
    failures = [failed_login("alice", started_at=T0 + timedelta(hours=1)),
                failed_login("mallory"), failed_login("mallory")]  # fmt: skip
    await store.write_batch([*alice, bob_open, *failures])

    stats = {item.username: item for item in await store.user_stats()}
    assert set(stats) == {"alice", "bob", "mallory"}
    assert stats["alice"].connections == 3
    assert stats["alice"].failed_logins == 1
    assert stats["alice"].bytes_from_client == 0 + 10 + 20
    assert stats["alice"].bytes_to_client == 1000 + 1001 + 1002
    assert abs(stats["alice"].tunnel_seconds - (1.5 + 3.0 + 4.5)) < 1e-9
    assert stats["alice"].last_seen == T0 + timedelta(hours=1)
    assert stats["bob"].connections == 1 and stats["bob"].failed_logins == 0
    assert stats["bob"].last_seen == T0 + timedelta(hours=3)
    assert stats["mallory"].connections == 0 and stats["mallory"].failed_logins == 2

    windowed = {
        item.username: item for item in await store.user_stats(since=T0 + timedelta(minutes=1))
    }
    assert windowed["alice"].connections == 2
    assert "mallory" not in windowed


async def test_prune_deletes_finished_entries_started_before_the_cutoff(
    engine: AsyncEngine,
) -> None:
    store = SqlAuditStore(engine)
    old_done = finished(opened(started_at=T0))
    old_open = opened(started_at=T0)
    new_done = finished(opened(started_at=T0 + timedelta(days=100)))
    await store.write_batch([old_done, old_open, new_done])
    assert await store.prune(T0 + timedelta(days=90)) == 1
    remaining = {entry.id for entry in await store.find_entries(AuditQuery())}
    assert remaining == {old_open.id, new_done.id}


async def test_names_outside_ascii_are_stored_as_given(engine: AsyncEngine) -> None:
    store = SqlAuditStore(engine)
    entry = finished(opened("zoë", target_host="bücher.example"))
    await store.write_batch([entry])
    assert await store.find_entries(AuditQuery(username="zoë")) == [entry]
