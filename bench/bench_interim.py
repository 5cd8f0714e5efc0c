"""What one interim tick costs the event loop: AuditObserver.record_interim over N open
tunnels that all moved (the worst case), into an AuditLog whose sink discards the batch.

    python -m bench.bench_interim [--tunnels 1000,10000] [--ticks 20]

No network, no database: the relay never calls into this; what is measured is the work the
loop does once per audit_interim_interval, besides the tunnels.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from socksauth.audit import AuditLog
from socksauth.connection_record import ConnectionRecord, Outcome
from socksauth.protocol import Address, Command, Reply
from socksauth.server.audit import INTERIM_CHUNK, AuditObserver
from socksauth.store.interfaces import AuditEntry


class DiscardingSink:
    async def write_batch(self, entries: Sequence[AuditEntry]) -> None:
        return None

    async def close_interrupted(self, node: str, at: datetime) -> int:
        return 0


def record(index: int, counter: list[int]) -> ConnectionRecord:
    rec = ConnectionRecord(
        client_host="10.0.0.1",
        client_port=1024 + index % 60000,
        started_at=datetime.now(UTC),
        started=time.monotonic(),
        username=f"user{index % 50}",
        command=Command.CONNECT,
        target=Address.from_host("192.0.2.1", 443),
        reply=Reply.SUCCEEDED,
        outcome=Outcome.CLOSED,
    )
    # Every tick sees new counts: each tunnel moved since the last one.
    rec.live_counts = lambda: (counter[0], counter[0] * 2)
    return rec


async def measure(tunnels: int, ticks: int) -> list[float]:
    counter = [0]
    with tempfile.TemporaryDirectory() as directory:
        async with AuditLog(
            DiscardingSink(),  # type: ignore[arg-type]
            node="bench",
            spill_path=Path(directory) / "spill.jsonl",
            memory_limit=max(100_000, tunnels * 2),
            batch_size=500,
        ) as audit_log:
            observer = AuditObserver(audit_log, "bench")
            for index in range(tunnels):
                observer.opened(record(index, counter))
            await audit_log.flush()
            seconds, chunks = [], []
            for _ in range(ticks):
                counter[0] += 4096
                progresses = list(observer._open.values())
                started = time.perf_counter()
                queued = 0
                # As run_interim does it, without its yields: each chunk timed alone.
                for start in range(0, len(progresses), INTERIM_CHUNK):
                    chunk_started = time.perf_counter()
                    queued += observer.record_interim(progresses[start : start + INTERIM_CHUNK])
                    chunks.append(time.perf_counter() - chunk_started)
                seconds.append(time.perf_counter() - started)
                assert queued == tunnels
                await audit_log.flush()
    return seconds, chunks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tunnels", default="1000,10000")
    parser.add_argument("--ticks", type=int, default=20)
    args = parser.parse_args(argv)
    for tunnels in (int(n) for n in args.tunnels.split(",")):
        seconds, chunks = asyncio.run(measure(tunnels, args.ticks))
        median = statistics.median(seconds)
        print(
            f"{tunnels:>6} moving tunnels: one tick {median * 1000:.2f} ms of loop time in all "
            f"(median of {args.ticks}), {median / tunnels * 1e6:.2f} µs per tunnel; the loop is "
            f"held at most {max(chunks) * 1000:.2f} ms at a time (median chunk of "
            f"{INTERIM_CHUNK}: {statistics.median(chunks) * 1000:.2f} ms)"
        )


if __name__ == "__main__":
    main()
