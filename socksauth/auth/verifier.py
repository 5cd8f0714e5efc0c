"""Verifier: password verifications off the event loop, a few at once, fair between addresses.

An argon2 verification costs tens of milliseconds of a core and ~19 MiB, so only as many run at
once as there are verification threads; the rest wait here. Two rules decide who waits:

- Turns go to client addresses in rotation (IPv6 by /64, as the throttle counts them), not in
  arrival order: a crawler that opens 500 connections with cold logins, or an attacker's
  flood of guesses, delays its own attempts, while one login from another address waits for
  at most one verification per address ahead of it.
- Identical attempts share one verification: the same address, user, stored hash and password
  in flight at once (a crawler's pool opening its connections with one password, before the
  first has been verified and cached) wait for the one verification instead of each queuing
  its own. The result is the same for all of them, so nothing is learnt from sharing.

When its turn comes, the throttle is asked again (``admit``): the failures verified while the
attempt waited may have locked its (user, address) pair out, or raised the delay the throttle
asks of it (its pair's failures, or a spray of usernames from its address). Such an attempt is
refused without spending the CPU, as it would have been had it arrived a moment later; so a
flood of guesses queued at once is judged on the failures ahead of it, as it would be arriving
one by one.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import hashlib
import hmac
import secrets
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import Executor

from socksauth.auth import passwords
from socksauth.auth.throttle import Admission, address_key


class NotVerified(enum.Enum):
    """Why an attempt was refused at its turn, unverified."""

    LOCKED = "locked"  # its pair was locked out meanwhile
    DELAYED = "delayed"  # the throttle now asks a longer delay than the attempt waited


class FairTurns:
    """At most ``limit`` holders at once; waiters are served one address at a time in turn.

    Used as ``await acquire(address)`` … ``release()``. A waiter cancelled while queued leaves
    the queue; one cancelled just after its turn was given passes the turn on.
    """

    __slots__ = ("_free", "_waiting")

    def __init__(self, limit: int) -> None:
        self._free = limit
        # Addresses with waiters, in the order they get the next free turn.
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    async def acquire(self, address: str) -> None:
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(address, deque()).append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.release()  # given, then cancelled before it could be used
            else:
                queue = self._waiting.get(address)
                if queue is not None:
                    queue.remove(turn)
                    if not queue:
                        del self._waiting[address]
            raise

    def release(self) -> None:
        while self._waiting:
            address, queue = next(iter(self._waiting.items()))
            turn = queue.popleft()
            if queue:
                self._waiting.move_to_end(address)
            else:
                del self._waiting[address]
            if not turn.done():
                turn.set_result(None)
                return
        self._free += 1

    @property
    def waiting(self) -> int:
        return sum(len(queue) for queue in self._waiting.values())


class _Flight:
    """One verification in progress and how many attempts wait for its answer."""

    __slots__ = ("task", "waiters")

    def __init__(self, task: asyncio.Task[bool | NotVerified]) -> None:
        self.task = task
        self.waiters = 0


class Verifier:
    """``verify()`` runs passwords.verify_password in ``executor``, ``threads`` at once."""

    def __init__(
        self, executor: Executor, threads: int, admit: Callable[[str, str], Admission]
    ) -> None:
        """``admit(client_host, username)``: the throttle's judgement of an attempt now."""
        self._executor = executor
        self._turns = FairTurns(threads)
        self._admit = admit
        self._flights: dict[bytes, _Flight] = {}
        # Flights are keyed by a digest, so no password sits in the table as a key.
        self._secret = secrets.token_bytes(32)

    async def verify(
        self,
        password: str,
        stored_hash: str,
        client_host: str,
        username: str,
        delayed_seconds: float = 0.0,
    ) -> bool | NotVerified:
        """Whether ``password`` matches ``stored_hash``, or why it was not verified at its
        turn; ``delayed_seconds``: the throttle delay the attempt has already waited."""
        address = address_key(client_host)
        key = self._flight_key(address, username, stored_hash, password)
        flight = self._flights.get(key)
        if flight is None or flight.task.done() or flight.task.cancelling():
            verification = self._in_turn(
                password, stored_hash, client_host, address, username, delayed_seconds
            )
            flight = self._flights[key] = _Flight(asyncio.ensure_future(verification))
            flight.task.add_done_callback(functools.partial(self._landed, key, flight))
        flight.waiters += 1
        try:
            # Shielded: one waiter's deadline must not cancel the others' verification.
            return await asyncio.shield(flight.task)
        finally:
            flight.waiters -= 1
            if not flight.waiters and not flight.task.done():
                # Every attempt gave up (deadline, client gone) while it still waited for a
                # turn: nobody wants this verification any more.
                flight.task.cancel()

    async def _in_turn(
        self,
        password: str,
        stored_hash: str,
        client_host: str,
        address: str,
        username: str,
        delayed_seconds: float,
    ) -> bool | NotVerified:
        """``address``: ``client_host``'s address_key (the unit turns go round)."""
        await self._turns.acquire(address)
        try:
            admission = self._admit(client_host, username)
            if admission.locked:
                return NotVerified.LOCKED
            if admission.delay_seconds > delayed_seconds:
                return NotVerified.DELAYED
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(
                self._executor, passwords.verify_password, password, stored_hash
            )
        finally:
            self._turns.release()

    def _landed(self, key: bytes, flight: _Flight, task: object) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if not flight.task.cancelled():
            flight.task.exception()  # retrieved here: every waiter may be gone

    def _flight_key(self, address: str, username: str, stored_hash: str, password: str) -> bytes:
        message = b"\0".join(
            part.encode("utf-8", "surrogateescape")
            for part in (address, username, stored_hash, password)
        )
        return hmac.digest(self._secret, message, hashlib.sha256)

    @property
    def waiting(self) -> int:
        """Attempts waiting for a verification turn."""
        return self._turns.waiting
