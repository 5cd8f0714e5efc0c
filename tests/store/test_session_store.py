"""Live sessions in SQL on SQLite and PostgreSQL: interim counts update open rows only, a
dead node's rows are not live, kicks mark rows and bump the change counter, traffic buckets."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import text, update
from sqlalchemy.ext.asyncio import AsyncEngine

from socksauth.audit import new_entry_id
from socksauth.connection_record import Outcome
from socksauth.store.audit import SqlAuditStore
from socksauth.store.changes import SqlChangeFeed
from socksauth.store.interfaces import AuditEntry, SessionQuery
from socksauth.store.models import NodeRow
from socksauth.store.nodes import SqlNodeHeartbeat
from socksauth.store.sessions import SqlSessionStore

NOW = datetime.now(UTC)


def tunnel(node: str = "node-a", user: str = "alice", host: str = "10.1.2.3") -> AuditEntry:
    return AuditEntry(
        id=new_entry_id(),
        node=node,
        client_host=host,
        client_port=40000,
        started_at=NOW - timedelta(seconds=30),
        username=user,
        command="connect",
        target_host="example.com",
        target_port=443,
        reply=0,
    )


def interim(entry: AuditEntry, sent: int, received: int, rate: float) -> AuditEntry:
    return AuditEntry(
        **{
            **{name: getattr(entry, name) for name in entry.__dataclass_fields__},
            "bytes_from_client": sent,
            "bytes_to_client": received,
            "updated_at": datetime.now(UTC),
            "rate_from_client": rate,
            "rate_to_client": rate * 2,
        }
    )


def finished(entry: AuditEntry, sent: int) -> AuditEntry:
    values = {name: getattr(entry, name) for name in entry.__dataclass_fields__}
    values.update(
        outcome="closed", ended_at=datetime.now(UTC), duration_seconds=30.0, bytes_from_client=sent
    )
    return AuditEntry(**values)


async def test_interim_counts_update_an_open_row_and_are_listed_live(engine: AsyncEngine) -> None:
    audit, sessions = SqlAuditStore(engine), SqlSessionStore(engine)
    async with SqlNodeHeartbeat(engine, "node-a"):
        entry = tunnel()
        await audit.write_batch([entry])
        await audit.write_batch([interim(entry, 1000, 5000, 100.0)])
        [live] = await sessions.live_sessions(SessionQuery())
        assert (live.id, live.bytes_from_client, live.bytes_to_client) == (entry.id, 1000, 5000)
        assert (live.rate_from_client, live.rate_to_client) == (100.0, 200.0)
        assert live.updated_at is not None
        # An interim entry for a row not written yet inserts it whole.
        other = tunnel(user="bob")
        await audit.write_batch([interim(other, 7, 8, 1.0)])
        users = [s.username for s in await sessions.live_sessions(SessionQuery())]
        assert sorted(users) == ["alice", "bob"]
        assert [s.username for s in await sessions.live_sessions(SessionQuery(username="bob"))] == [
            "bob"
        ]


async def test_a_late_interim_entry_never_reopens_or_changes_a_finished_row(
    engine: AsyncEngine,
) -> None:
    audit, sessions = SqlAuditStore(engine), SqlSessionStore(engine)
    async with SqlNodeHeartbeat(engine, "node-a"):
        entry = tunnel()
        await audit.write_batch([entry])
        await audit.write_batch([finished(entry, 4242)])
        await audit.write_batch([interim(entry, 1, 1, 1.0)])
        assert await sessions.live_sessions(SessionQuery()) == []
        async with engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT bytes_from_client, outcome FROM audit_events WHERE id = :id"),
                    {"id": entry.id.hex if engine.dialect.name == "sqlite" else entry.id},
                )
            ).one()
        assert tuple(row) == (4242, "closed")


async def test_the_open_rows_of_a_node_that_stopped_beating_are_not_live(
    engine: AsyncEngine,
) -> None:
    audit, sessions = SqlAuditStore(engine), SqlSessionStore(engine)
    async with SqlNodeHeartbeat(engine, "node-a"), SqlNodeHeartbeat(engine, "node-b"):
        await audit.write_batch([tunnel("node-a"), tunnel("node-b")])
        assert {s.node for s in await sessions.live_sessions(SessionQuery())} == {
            "node-a",
            "node-b",
        }
        # node-b's last heartbeat is a minute old: it died.
        async with engine.begin() as conn:
            await conn.execute(
                update(NodeRow)
                .where(NodeRow.name == "node-b")
                .values(heartbeat_at=datetime.now(UTC) - timedelta(minutes=1))
            )
        assert {s.node for s in await sessions.live_sessions(SessionQuery())} == {"node-a"}
        nodes = {node.name: node.alive for node in await sessions.nodes()}
        assert nodes == {"node-a": True, "node-b": False}
        assert [s.node for s in await sessions.live_sessions(SessionQuery(node="node-a"))] == [
            "node-a"
        ]
    # A clean stop deletes the node's row.
    assert await sessions.nodes() == []


async def test_a_kick_marks_the_rows_of_one_user_from_one_network_and_bumps_the_counter(
    engine: AsyncEngine,
) -> None:
    audit, sessions, changes = SqlAuditStore(engine), SqlSessionStore(engine), SqlChangeFeed(engine)
    async with SqlNodeHeartbeat(engine, "node-a"), SqlNodeHeartbeat(engine, "node-b"):
        office = tunnel("node-a", host="10.1.2.3")
        home = tunnel("node-b", host="192.0.2.7")
        other = tunnel("node-b", user="bob", host="10.1.2.4")
        await audit.write_batch([office, home, other])
        before = await changes.revision()
        asked = await sessions.request_kill(
            by="root@admin-host", username="alice", client_networks=["10.0.0.0/8"]
        )
        assert [entry.id for entry in asked] == [office.id]
        assert await changes.revision() == before + 1
        assert await sessions.kill_requests("node-a") == {office.id: "root@admin-host"}
        assert await sessions.kill_requests("node-b") == {}
        by_id = await sessions.request_kill(by="ops", ids=[other.id])
        assert [entry.id for entry in by_id] == [other.id]
        assert await sessions.kill_requests("node-b") == {other.id: "ops"}
        # Completing the row ends the request; who asked stays on the row.
        await audit.write_batch([finished(office, 10)])
        assert await sessions.kill_requests("node-a") == {}
        still_open = await sessions.find_open([office.id, other.id])
        assert [entry.id for entry in still_open] == [other.id]


async def test_user_activity_sums_live_rates_and_todays_bytes_and_failed_logins(
    engine: AsyncEngine,
) -> None:
    audit, sessions = SqlAuditStore(engine), SqlSessionStore(engine)
    async with SqlNodeHeartbeat(engine, "node-a"):
        one, two = tunnel(), tunnel()
        done = tunnel(user="bob")
        failed = AuditEntry(
            id=new_entry_id(),
            node="node-a",
            client_host="10.9.9.9",
            client_port=1,
            started_at=NOW,
            username="bob",
            outcome=Outcome.AUTH_FAILED.value,
            ended_at=NOW,
            duration_seconds=0.0,
        )
        await audit.write_batch(
            [interim(one, 100, 200, 10.0), interim(two, 1, 2, 5.0), finished(done, 999), failed]
        )
        activity = {
            item.username: item for item in await sessions.user_activity(NOW - timedelta(hours=1))
        }
        alice, bob = activity["alice"], activity["bob"]
        assert (alice.open_connections, alice.rate_from_client, alice.rate_to_client) == (
            2,
            15.0,
            30.0,
        )
        assert (alice.bytes_from_client, alice.bytes_to_client) == (101, 202)
        assert (bob.open_connections, bob.bytes_from_client, bob.failed_logins) == (0, 999, 1)


async def test_traffic_spreads_each_connections_bytes_over_its_life(engine: AsyncEngine) -> None:
    audit, sessions = SqlAuditStore(engine), SqlSessionStore(engine)
    since = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
    values = {
        "id": new_entry_id(),
        "node": "n",
        "client_host": "10.0.0.1",
        "client_port": 1,
        "username": "alice",
        "command": "connect",
        # Two minutes, from 12:01 to 12:03: half its bytes in each of those minutes.
        "started_at": since + timedelta(minutes=1),
        "ended_at": since + timedelta(minutes=3),
        "outcome": "closed",
        "duration_seconds": 120.0,
        "bytes_from_client": 600,
        "bytes_to_client": 1200,
    }
    await audit.write_batch([AuditEntry(**values)])  # type: ignore[arg-type]
    series = await sessions.traffic(since, since + timedelta(minutes=5), 60)
    assert series == {"alice": [(0, 0), (300, 600), (300, 600), (0, 0), (0, 0)]}
