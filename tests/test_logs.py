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


# What a client could put in a username or a target name to forge or colour a line.
FORGERIES = {
    "newline": "x\n2026-12-02T07:00:00 INFO socksauth.client: 10.9.9.9:1 user=admin closed",
    "carriage return": "x\r2026-12-02T07:00:00 INFO socksauth.client: forged",
    "ansi escape": "\x1b[31mred\x1b[0m",
    "line separator": "x\u20282026-12-02T07:00:00 INFO forged",
    "next line": "x\x852026-12-02T07:00:00 INFO forged",
    "backslash": "looks\\nescaped",
}


@pytest.mark.parametrize("text", FORGERIES.values(), ids=FORGERIES.keys())
def test_escape_leaves_one_printable_line_that_says_what_was_sent(text: str) -> None:
    escaped = logs.escape(text)
    assert escaped.isprintable()
    assert len(escaped.splitlines()) == 1
    assert "\x1b" not in escaped
    # Unambiguous: read back as a Python string literal it is the text that was sent.
    assert escaped.encode().decode("unicode_escape") == text


def test_escape_returns_printable_text_unchanged() -> None:
    assert logs.escape("alice@example.com:443 ünïcödé") == "alice@example.com:443 ünïcödé"


@pytest.mark.parametrize("text", FORGERIES.values(), ids=FORGERIES.keys())
@pytest.mark.parametrize("conversion", ["%s", "%r"])
def test_a_text_line_cannot_be_forged_or_coloured_by_an_argument(
    capsys: pytest.CaptureFixture[str], text: str, conversion: str
) -> None:
    logs.configure("INFO", "text")
    logs.get_logger("client").info(f"login failed for user {conversion} to %s", text, text)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n")
    line = err[:-1]
    assert line.isprintable(), line
    assert len(line.splitlines()) == 1
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d INFO socksauth\.client: login failed", line)


@pytest.mark.parametrize("text", FORGERIES.values(), ids=FORGERIES.keys())
def test_a_json_line_cannot_be_forged_or_coloured_by_an_argument_or_an_extra(
    capsys: pytest.CaptureFixture[str], text: str
) -> None:
    logs.configure("INFO", "json")
    logs.get_logger("client").info("user=%s target %r", text, text, extra={"user": text})
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err[:-1].isprintable()
    entry = json.loads(err)
    assert entry["message"].isprintable()
    assert entry["message"].startswith(f"user={logs.escape(text)} target ")
    assert entry["user"] == logs.escape(text)


def test_numbers_keep_their_formats_and_a_mismatched_call_keeps_its_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    logs.configure("INFO", "text")
    log = logs.get_logger("test")
    log.info("out=%d %.3fs %s", 12, 0.5, "x\ny")
    log.info("%d needs a number", "x\ny")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].endswith("socksauth.test: out=12 0.500s x\\ny")
    assert len(lines) == 2 and lines[1].endswith("%d needs a number ('x\\\\ny',)")
