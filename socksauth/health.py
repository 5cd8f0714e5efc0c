"""Health: how one background loop (or the login path) fares with the store — exponential
back-off with jitter while it fails, one log line when a failure starts, one when it ends.

Every loop that touches the store (the change watch, the connection leases, the last-login
writer, the audit writer) owns one ``Health``. Without it a database outage costs a log line
(and a traceback) per attempt, and a loop whose deadline passed during the outage retries as
fast as the event loop turns: issue 12 measured 225,087 lines in a 7 s PostgreSQL restart.
With it an outage of any length costs two lines per loop, and the attempts in between are
spaced 1, 2, 4 … up to ``max_seconds`` apart (times a random factor), so CPU stays near idle.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable

from socksauth.logs import get_logger

# First retry after about this long; doubled per failed attempt up to the maximum, which is
# also the longest a loop may lag behind a store that is back (an attempt every 5-10 s costs
# nothing: a 10-minute outage is about 80 silent attempts per loop).
BASE_SECONDS = 1.0
MAX_SECONDS = 10.0
# A summary of refused logins at most this often (Tally).
SUMMARY_SECONDS = 60.0


def describe(error: BaseException) -> str:
    """One line saying what went wrong, without the SQL statement, URL or link SQLAlchemy
    appends: the driver's own first line when the error wraps one (``.orig``)."""
    cause: BaseException = getattr(error, "orig", None) or error
    lines = str(cause).strip().splitlines()
    text = lines[0] if lines else ""
    name = type(cause).__name__
    return f"{name}: {text}" if text else name


class Health:
    """Failure state and back-off of one loop. ``failed()`` returns how long to wait before
    the next attempt (``retry()`` waits it); ``succeeded()`` ends a failure.

    The first failure of an outage is a warning with its cause (the traceback only when the
    logger is at DEBUG); later failures are DEBUG lines; the first success after failures is
    a warning saying how long the outage lasted and how many attempts failed.
    """

    __slots__ = (
        "_base",
        "_clock",
        "_log",
        "_max",
        "_random",
        "failing_since",
        "failures",
        "last_error",
        "what",
    )

    def __init__(
        self,
        what: str,
        logger: logging.Logger | None = None,
        *,
        base_seconds: float = BASE_SECONDS,
        max_seconds: float = MAX_SECONDS,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``what``: the work, as the log lines name it ("re-reading rules and accounts")."""
        if not 0 < base_seconds <= max_seconds:
            raise ValueError("need 0 < base_seconds <= max_seconds")
        self.what = what
        self._log = logger if logger is not None else get_logger("health")
        self._base = base_seconds
        self._max = max_seconds
        self._random = rng
        self._clock = clock
        self.failures = 0  # failed attempts in the current outage
        self.failing_since: float | None = None  # clock() at the first failure of it
        self.last_error = ""

    @property
    def failing(self) -> bool:
        return self.failing_since is not None

    def failed(self, error: BaseException) -> float:
        """Note a failed attempt; the seconds to wait before the next one: the back-off
        doubled per failure up to ``max_seconds``, times a random factor in [0.5, 1) so
        that the loops of many nodes do not retry in step."""
        self.last_error = describe(error)
        self.failures += 1
        if self.failing_since is None:
            self.failing_since = self._clock()
            self._log.warning(
                "%s failed (%s); retrying with back-off, silent until it succeeds",
                self.what,
                self.last_error,
                exc_info=error if self._log.isEnabledFor(logging.DEBUG) else None,
            )
        else:
            self._log.debug("%s failed again (%s)", self.what, self.last_error)
        backoff: float = min(self._max, self._base * 2.0 ** min(self.failures - 1, 32))
        return backoff * (0.5 + self._random() / 2)

    def succeeded(self) -> None:
        """Note a successful attempt; logs the end of an outage."""
        if self.failing_since is None:
            return
        lasted = self._clock() - self.failing_since
        self._log.warning(
            "%s works again after %.1f s (%d failed attempt%s)",
            self.what,
            lasted,
            self.failures,
            "" if self.failures == 1 else "s",
        )
        self.failing_since = None
        self.failures = 0

    async def retry(self, error: BaseException) -> None:
        """``failed(error)``, then wait the back-off it returns."""
        await asyncio.sleep(self.failed(error))


class Tally:
    """Counts events that each would deserve a log line (a login refused while the store is
    down) and writes at most one line per ``interval_seconds``: the first event at once, the
    others summed up when the interval is over."""

    __slots__ = (
        "_clock",
        "_interval",
        "_last_cause",
        "_log",
        "_message",
        "_pending",
        "_timer",
        "total",
    )

    def __init__(
        self,
        message: str,
        logger: logging.Logger,
        interval_seconds: float = SUMMARY_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``message``: a format with ``%d`` (the count), ``%g`` (the interval) and ``%s``
        (the last cause), e.g. "%d login(s) refused in %g s: the store is unavailable (%s)"."""
        self._message = message
        self._log = logger
        self._interval = interval_seconds
        self._clock = clock
        self._pending = 0
        self._last_cause = ""
        self._timer: asyncio.TimerHandle | None = None
        self.total = 0

    def add(self, cause: str) -> None:
        self.total += 1
        self._pending += 1
        self._last_cause = cause
        if self._timer is None:
            self._flush()

    def _flush(self) -> None:
        self._timer = None
        if not self._pending:
            return
        self._log.warning(self._message, self._pending, self._interval, self._last_cause)
        self._pending = 0
        # The next line no sooner than one interval from now.
        self._timer = asyncio.get_running_loop().call_later(self._interval, self._flush)

    def close(self) -> None:
        """Write what is counted and stop the timer (at shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._pending:
            self._log.warning(self._message, self._pending, self._interval, self._last_cause)
            self._pending = 0


async def stop_task(task: asyncio.Task[None] | None) -> None:
    """Cancel a background loop and wait until it has stopped (whatever it raised)."""
    if task is not None:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
