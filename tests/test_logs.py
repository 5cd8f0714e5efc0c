"""Log lines: human-readable by default, one JSON object per line with --log-format json."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator

import pytest

from socksauth import logs


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger(logs.LOGGER_NAME)
    saved = (root.handlers[:], root.level, root.propagate)
    yield
    root.handlers[:], root.level, root.propagate = saved


def test_json_lines_carry_time_level_logger_message_and_extra_fields(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("INFO", "json")
    log = logs.get_logger("test")
    log.info("tunnel to %s closed", "example.com:443", extra={"user": "alice", "bytes": 12})
    log.debug("not at INFO")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry.pop("ts").endswith("+00:00")
    assert entry == {
        "level": "INFO",
        "logger": "socksauth.test",
        "message": "tunnel to example.com:443 closed",
        "user": "alice",
        "bytes": 12,
    }


def test_a_json_line_holds_the_traceback_and_stays_one_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("INFO", "json")
    try:
        raise RuntimeError("multi\nline")
    except RuntimeError:
        logs.get_logger("test").exception("unexpected error for client %s", "::1", extra={"n": {1}})
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1
    entry = json.loads(lines[0])
    assert entry["level"] == "ERROR"
    assert "RuntimeError: multi\nline" in entry["exc_info"]
    assert entry["n"] == "{1}"  # not JSON-serializable: logged as text rather than lost


def test_text_is_the_default_format(capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("INFO")
    logs.get_logger("test").warning("plain")
    line = capsys.readouterr().err
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d WARNING socksauth\.test: plain\n", line)
