"""Health and Tally: back-off with jitter, one line when an outage starts and one when it ends."""

from __future__ import annotations

import asyncio
import logging

import pytest

from socksauth.health import Health, Tally, describe


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_back_off_doubles_up_to_the_maximum_with_jitter_in_its_upper_half(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lowest = Health("x", base_seconds=1, max_seconds=10, rng=lambda: 0.0)
    highest = Health("x", base_seconds=1, max_seconds=10, rng=lambda: 0.999999)
    error = ConnectionRefusedError(111, "Connection refused")
    low = [lowest.failed(error) for _ in range(7)]
    high = [highest.failed(error) for _ in range(7)]
    assert low == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert high == pytest.approx([1, 2, 4, 8, 10, 10, 10], rel=1e-5)


def test_an_outage_is_one_warning_with_its_cause_and_one_with_its_duration(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = Clock()
    logger = logging.getLogger("socksauth.test_health")
    health = Health("re-reading the rules", logger, clock=clock)
    caplog.set_level(logging.INFO, logger="socksauth")
    for _ in range(1000):
        health.failed(ConnectionRefusedError(111, "Connection refused"))
        clock.now += 0.6
    health.succeeded()
    health.succeeded()  # nothing more to say
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "re-reading the rules failed (ConnectionRefusedError: [Errno 111] Connection refused);"
        " retrying with back-off, silent until it succeeds",
        "re-reading the rules works again after 600.0 s (1000 failed attempts)",
    ]
    assert not any(r.exc_info for r in caplog.records)
    assert not health.failing and health.failures == 0


def test_the_traceback_is_logged_only_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("socksauth.test_health")
    caplog.set_level(logging.DEBUG, logger="socksauth")
    health = Health("writing", logger)
    try:
        raise OSError(28, "No space left on device")
    except OSError as error:
        health.failed(error)
        health.failed(error)
    assert caplog.records[0].exc_info is not None
    assert [r.levelno for r in caplog.records] == [logging.WARNING, logging.DEBUG]


def test_describe_keeps_the_drivers_first_line_only() -> None:
    class Wrapped(Exception):
        orig = ValueError('database "x" does not exist\nDETAIL: more')

    assert describe(Wrapped("(psycopg) ... [SQL: SELECT 1] https://sqlalche.me")) == (
        'ValueError: database "x" does not exist'
    )
    assert describe(TimeoutError()) == "TimeoutError"


async def test_a_tally_writes_the_first_event_at_once_and_the_rest_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="socksauth")
    tally = Tally(
        "%d login(s) refused in %g s: %s", logging.getLogger("socksauth.t"), interval_seconds=0.2
    )
    for _ in range(500):
        tally.add("the store is unavailable")
    await asyncio.sleep(0.3)
    tally.add("the store is unavailable")
    tally.close()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "1 login(s) refused in 0.2 s: the store is unavailable",
        "499 login(s) refused in 0.2 s: the store is unavailable",
        "1 login(s) refused in 0.2 s: the store is unavailable",
    ]
    assert tally.total == 501
