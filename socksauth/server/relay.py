"""Relay: splices two transports with flow control, half-close and byte counters.

Each direction is a BufferedProtocol reading into a buffer it allocates at its first read
(16 KiB, the full relay_buffer_bytes once a read fills it while the sink keeps up), writing to
the other transport. When the other transport's write buffer passes its high-water mark
asyncio pauses us (pause_writing) and we stop reading the source.

Memory per tunnel stays bounded whatever the speed difference between the two peers: a
direction whose sink could not take a chunk at once gives its buffer up (the sink holds the
bytes; the next read comes into a small buffer again), so a stalled tunnel holds about one
chunk, not a chunk in the sink plus a fresh full-size buffer per direction (issue 12 measured
1.5 MiB per stalled tunnel before). An idle tunnel gives its buffers up at its idle check.
A RelayBudget shared by all tunnels of a server caps the total: over it, no buffer grows to
full size and a direction whose sink is backed up stops reading until the sink drains.
"""

from __future__ import annotations

import asyncio
import enum
from typing import cast

from socksauth.server.limits import TokenBucket


class CloseReason(enum.Enum):
    """Why a tunnel ended, as the audit and the log line report it."""

    CLOSED = "closed"  # both sides finished (FIN each way) or one side closed cleanly
    CLIENT_ERROR = "client_error"  # the client's connection failed (reset, …)
    TARGET_ERROR = "target_error"  # the target's connection failed
    SHUTDOWN = "shutdown"  # the server closed it
    IDLE_TIMEOUT = "idle_timeout"  # no byte either way for idle_timeout_seconds


# The first read buffer of each direction (see _Direction.get_buffer).
_FIRST_BUFFER_BYTES = 16 * 1024


class _Direction(asyncio.BufferedProtocol):
    """Bytes read from ``source`` (the transport this protocol is attached to) go to ``sink``."""

    __slots__ = (
        "_budget_paused",
        "_buffer_bytes",
        "_held",
        "_rate_timer",
        "_relay",
        "_sink_full",
        "_view",
        "bucket",
        "count",
        "early",
        "eof",
        "is_client",
        "sink",
        "source",
    )

    def __init__(self, relay: Relay, buffer_bytes: int, is_client: bool) -> None:
        self._relay = relay
        self._buffer_bytes = buffer_bytes
        # Allocated at the first read: an idle tunnel holds no relay buffer at all.
        self._view: memoryview | None = None
        self.source: asyncio.Transport | None = None
        self.sink: asyncio.Transport | None = None
        self.count = 0
        self.early = bytearray()  # target bytes read before the client was attached
        self.eof = False
        self.is_client = is_client
        # Bandwidth limit: charged once per chunk read; reading pauses while in debt.
        self.bucket: TokenBucket | None = None
        self._rate_timer: asyncio.TimerHandle | None = None
        self._sink_full = False
        # Bytes counted against the budget: our buffer, and what the sink held after our
        # last write (sampled: the sink does not say when it drains below its low mark).
        self._held = 0
        self._budget_paused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.source = cast(asyncio.Transport, transport)
        if self.sink is None:
            # The target connection exists before the client is attached (the success reply
            # goes first): a target that speaks first (SSH, SMTP banners) waits in the kernel.
            self.source.pause_reading()

    def get_buffer(self, sizehint: int) -> memoryview:
        if self._view is None:
            # Most tunnels move a few KiB: a small first buffer comes from the heap, where
            # relay_buffer_bytes (256 KiB) would be an mmap, zeroed pages and a munmap for
            # each direction of each of them. A read that fills it brings the full size.
            self._view = memoryview(bytearray(min(self._buffer_bytes, _FIRST_BUFFER_BYTES)))
            self._count_held()
        return self._view

    def _count_held(self) -> None:
        """Tell the budget what this direction holds now (buffer + sink's backlog)."""
        held = 0 if self._view is None else len(self._view)
        if self.sink is not None and not self.sink.is_closing():
            held += self.sink.get_write_buffer_size()
        self._relay.budget.add(held - self._held)
        self._held = held

    def drop_buffer(self) -> None:
        """Give the read buffer up (stalled, idle, ended); the next read gets a small one."""
        self._view = None
        self._count_held()

    def buffer_updated(self, nbytes: int) -> None:
        assert self._view is not None
        self.count += nbytes
        if self.sink is None:
            # The target spoke before the client was attached (uvloop may deliver a first
            # read even though connection_made paused reading): keep it for attach_client.
            self.early.extend(self._view[:nbytes])
            if self.source is not None:
                self.source.pause_reading()
            return
        self.sink.write(self._view[:nbytes])
        budget = self._relay.budget
        if self.sink.get_write_buffer_size():
            # The sink could not send it all at once and may keep a reference to our buffer
            # (Python 3.12+ queues memoryviews without copying): hand it over. The next read
            # comes into a small buffer (allocated then): while the sink is backed up, what
            # this direction holds is about one chunk, in the sink. Only happens when the sink
            # is backed up, not per chunk.
            self._view = None
            self._count_held()
            if budget.over:
                # Over the budget: the directions whose sinks back up (the fastest readers)
                # wait until their sink has drained.
                self._budget_paused = True
                budget.wait(self)
                self._update_reading()
        elif nbytes == len(self._view) < self._buffer_bytes and not budget.over:
            # A bulk transfer the sink keeps up with: read in full-size chunks from now on (a
            # new buffer, as the sink may still hold the old one).
            self._view = memoryview(bytearray(self._buffer_bytes))
            self._count_held()
        if self.bucket is not None:
            wait = self.bucket.consume(nbytes)
            if wait > 0 and self._rate_timer is None:
                # In debt: stop reading until it is paid. The kernel's buffers fill and TCP
                # flow control slows the sender; no byte is held or looked at here.
                assert self.source is not None
                self.source.pause_reading()
                self._rate_timer = asyncio.get_running_loop().call_later(wait, self._rate_paid)

    def _rate_paid(self) -> None:
        self._rate_timer = None
        self._update_reading()

    def sink_full(self, full: bool) -> None:
        """Our sink's write buffer passed its high-water mark (or drained again)."""
        self._sink_full = full
        if not full:
            self._count_held()
        self._update_reading()

    def budget_check(self) -> bool:
        """Called by the budget while we wait for it: resume when our sink has drained;
        True once we no longer wait."""
        self._count_held()
        sink = self.sink
        if sink is None or sink.is_closing() or not sink.get_write_buffer_size():
            self._budget_paused = False
            self._update_reading()
            return True
        return False

    def _update_reading(self) -> None:
        source = self.source
        if source is None or source.is_closing():
            return
        if self._sink_full or self._rate_timer is not None or self._budget_paused:
            source.pause_reading()
        else:
            source.resume_reading()

    def cancel_timer(self) -> None:
        if self._rate_timer is not None:
            self._rate_timer.cancel()
            self._rate_timer = None

    def release(self) -> None:
        """The tunnel ended: nothing of it counts against the budget any more."""
        self.cancel_timer()
        self._view = None
        self._relay.budget.add(-self._held)
        self._held = 0
        self._budget_paused = False
        self._relay.budget.forget(self)

    def eof_received(self) -> bool:
        # Half-close: pass the FIN on and keep the other direction running.
        self.eof = True
        if self.sink is None:
            return True  # before the client is attached: attach_client passes it on
        if not self.sink.is_closing() and self.sink.can_write_eof():
            self.sink.write_eof()
        self._relay.direction_ended(self)
        return True  # keep our transport open: the other direction may still write to it

    def connection_lost(self, exc: Exception | None) -> None:
        self._relay.connection_lost(self, exc)

    # asyncio calls these on the protocol of a transport whose *write* buffer is full, i.e. on
    # the direction that reads from it; the bytes backing up come from the other direction.
    def pause_writing(self) -> None:
        self._relay.other(self).sink_full(True)

    def resume_writing(self) -> None:
        self._relay.other(self).sink_full(False)


class Relay:
    """Runs one tunnel between a client transport and a target transport until it ends."""

    __slots__ = (
        "_finished",
        "_idle_counts",
        "_idle_since",
        "_idle_timeout",
        "_idle_timer",
        "budget",
        "ended",
        "from_client",
        "to_client",
    )

    def __init__(
        self,
        buffer_bytes: int,
        *,
        buckets: tuple[TokenBucket, TokenBucket] | None = None,
        idle_timeout_seconds: float | None = None,
        budget: RelayBudget | None = None,
    ) -> None:
        """``buckets``: bandwidth limits (from client, to client); ``idle_timeout_seconds``:
        end the tunnel when no byte moved either way for that long; ``budget``: the memory
        all tunnels of the server share (None: this tunnel is not counted)."""
        self.budget = budget if budget is not None else RelayBudget(None)
        self.from_client = _Direction(self, buffer_bytes, is_client=True)
        self.to_client = _Direction(self, buffer_bytes, is_client=False)
        if buckets is not None:
            self.from_client.bucket, self.to_client.bucket = buckets
        # Why the tunnel ended, once it has: awaited by the client connection. _finish keeps
        # its own flag because a cancelled waiter (shutdown) cancels this future with it.
        self.ended: asyncio.Future[CloseReason] = asyncio.get_running_loop().create_future()
        self._finished = False
        self._idle_timeout = idle_timeout_seconds
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_counts = (-1, -1)
        self._idle_since = 0.0

    def other(self, direction: _Direction) -> _Direction:
        return self.to_client if direction is self.from_client else self.from_client

    @property
    def target_protocol(self) -> asyncio.BufferedProtocol:
        """The protocol to give the outbound connection (loop.create_connection)."""
        return self.to_client

    def attach_client(self, client: asyncio.Transport, trailing: bytes, client_eof: bool) -> None:
        """Take over the client transport from the handshake, with what it already sent."""
        target = self.to_client.source
        assert target is not None, "connect the target first"
        self.from_client.source = client
        self.from_client.sink = target
        self.to_client.sink = client
        client.set_protocol(self.from_client)
        if self.to_client.early:
            client.write(self.to_client.early)
            self.to_client.early = bytearray()
        if self.to_client.eof:
            self.to_client.eof_received()
        if trailing:
            self.from_client.count += len(trailing)
            target.write(trailing)
        if client_eof:
            self.from_client.eof_received()
        else:
            client.resume_reading()
        target.resume_reading()
        if self._idle_timeout is not None:
            self._check_idle()

    def _check_idle(self) -> None:
        # A timer a few times per timeout instead of a timestamp per chunk: idle tunnels cost
        # one callback now and then, busy ones nothing per byte.
        assert self._idle_timeout is not None
        loop = asyncio.get_running_loop()
        counts = self.bytes_counts()
        if counts != self._idle_counts:
            self._idle_counts = counts
            self._idle_since = loop.time()
        elif loop.time() - self._idle_since >= self._idle_timeout:
            self._finish(CloseReason.IDLE_TIMEOUT)
            return
        else:
            # Nothing moved since the last check: an idle (or stalled) tunnel keeps no buffer.
            for direction in (self.from_client, self.to_client):
                direction.drop_buffer()
        self._idle_timer = loop.call_later(self._idle_timeout / 4, self._check_idle)

    def bytes_counts(self) -> tuple[int, int]:
        return self.from_client.count, self.to_client.count

    def close(self, reason: CloseReason = CloseReason.SHUTDOWN) -> None:
        """End the tunnel now (shutdown, policy)."""
        self._finish(reason)

    def direction_ended(self, direction: _Direction) -> None:
        if self.from_client.eof and self.to_client.eof:
            self._finish(CloseReason.CLOSED)

    def connection_lost(self, direction: _Direction, exc: Exception | None) -> None:
        if exc is None:
            reason = CloseReason.CLOSED
        else:
            reason = CloseReason.CLIENT_ERROR if direction.is_client else CloseReason.TARGET_ERROR
        self._finish(reason)

    def _finish(self, reason: CloseReason) -> None:
        if self._finished:
            return
        self._finished = True
        if not self.ended.done():
            self.ended.set_result(reason)
        self.from_client.release()
        self.to_client.release()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        for transport in (self.from_client.source, self.to_client.source):
            if transport is not None and not transport.is_closing():
                if reason is CloseReason.CLOSED:
                    transport.close()  # flushes what is still buffered
                else:
                    transport.abort()


# How often the budget looks at the directions it paused (their sinks do not say when they
# drain below the low-water mark).
_BUDGET_CHECK_SECONDS = 0.05


class RelayBudget:
    """The relay memory of one server: the read buffers of all its tunnels and what their
    sinks hold, as the directions report it. Over ``limit_bytes`` no buffer grows to full
    size and the directions whose sinks back up pause until their sink has drained, so the
    process stops growing there; under it, nothing is paused for it."""

    __slots__ = ("_timer", "_waiting", "limit_bytes", "used")

    def __init__(self, limit_bytes: int | None) -> None:
        self.limit_bytes = limit_bytes
        self.used = 0
        self._waiting: set[_Direction] = set()
        self._timer: asyncio.TimerHandle | None = None

    @property
    def over(self) -> bool:
        return self.limit_bytes is not None and self.used > self.limit_bytes

    @property
    def waiting(self) -> int:
        """Directions paused by the budget now."""
        return len(self._waiting)

    def add(self, nbytes: int) -> None:
        self.used += nbytes

    def wait(self, direction: _Direction) -> None:
        self._waiting.add(direction)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(_BUDGET_CHECK_SECONDS, self._check)

    def forget(self, direction: _Direction) -> None:
        self._waiting.discard(direction)

    def _check(self) -> None:
        self._timer = None
        for direction in list(self._waiting):
            if direction.budget_check():
                self._waiting.discard(direction)
        if self._waiting:
            self._timer = asyncio.get_running_loop().call_later(_BUDGET_CHECK_SECONDS, self._check)
