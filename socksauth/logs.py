"""Logging setup: one format for the whole process; secrets never reach a record; text from
the wire is escaped on its way in, so no client can start a line or colour a terminal."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

LOGGER_NAME = "socksauth"

# What every LogRecord has; any other attribute came from ``extra=`` and is logged as a field.
_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


def get_logger(component: str) -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{component}")


# What a character that is not printable becomes (str.isprintable(): control characters,
# ANSI's ESC, CR/LF, the Unicode line and paragraph separators U+2028/9 and NEL U+0085 that
# splitlines() breaks on, bidi overrides, …), and the backslash, so that an escape is never
# ambiguous with text a client wrote.
_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def escape(text: str) -> str:
    """``text`` with every character that could end a line, start an ANSI sequence or
    reorder what a terminal shows written as a Python-style escape (``\\n``, ``\\x1b``,
    ``\\u2028``); plain printable text is returned unchanged."""
    if text.isprintable() and "\\" not in text:
        return text
    out = []
    for character in text:
        if character in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[character])
        elif character.isprintable():
            out.append(character)
        elif ord(character) <= 0xFF:
            out.append(f"\\x{ord(character):02x}")
        elif ord(character) <= 0xFFFF:
            out.append(f"\\u{ord(character):04x}")
        else:
            out.append(f"\\U{ord(character):08x}")
    return "".join(out)


class _Escaped:
    """A log argument as it will be printed, escaped: ``%s`` and ``%r`` both go through
    escape(); numbers are passed as they are (``%d`` needs them, and they cannot hold text)."""

    __slots__ = ("_value",)

    def __init__(self, value: object) -> None:
        self._value = value

    def __str__(self) -> str:
        return escape(str(self._value))

    def __repr__(self) -> str:
        # repr() of a str already escapes what is not printable (and doubles backslashes):
        # escaping it again would only double them once more.
        text = repr(self._value)
        return text if text.isprintable() else escape(text)

    def __format__(self, spec: str) -> str:
        return escape(format(self._value, spec))


def _escaped_argument(value: object) -> object:
    if isinstance(value, str):
        # Nearly every argument: printable text with no backslash prints as it is, with %s
        # and with %r alike (repr() then adds only the quotes).
        return value if value.isprintable() and "\\" not in value else _Escaped(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return _Escaped(value)


def escaped_message(record: logging.LogRecord) -> str:
    """The record's message with every argument escaped: the one place where what callers
    pass to a log call (a username, a target name, an error quoting the wire) becomes text.
    The format string is ours and keeps its own newlines, if it has any."""
    args: Any = record.args
    if not args:
        return escape(str(record.msg)) if not isinstance(record.msg, str) else record.msg
    if isinstance(args, Mapping):
        args = {key: _escaped_argument(value) for key, value in args.items()}
    else:
        args = tuple(_escaped_argument(value) for value in args)
    try:
        message: str = str(record.msg) % args
        return message
    except (TypeError, ValueError):
        # A call whose arguments do not fit its format: logging would print an error to
        # stderr and lose the line; keep it, escaped.
        return escape(f"{record.msg} {record.args!r}")


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: MESSAGE``, the message escaped (escaped_message()).

    Formatted by hand rather than through a format string and a copy of the record: a
    connection's line is logged on every close, so what a line costs is paid per connection.
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
        self._second = -1
        self._stamp = ""

    def format(self, record: logging.LogRecord) -> str:
        record.message = escaped_message(record)
        second = int(record.created)
        if second != self._second:
            # One strftime a second, not one a line (the format has no sub-second part).
            self._second, self._stamp = second, self.formatTime(record, self.datefmt)
        line = f"{self._stamp} {record.levelname} {record.name}: {record.message}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO 8601, UTC), level, logger, message, the ``extra``
    fields, and exc_info/stack_info as text when present."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": escaped_message(record),
        }
        for name, value in vars(record).items():
            if name not in _RECORD_ATTRIBUTES and name not in entry:
                # Extra fields are escaped as the message is: a JSON line read by a person
                # (jq -r, a terminal) must not start a line or colour it either.
                entry[name] = escape(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        # default=str: an extra that JSON has no type for (an address, a Path) still logs.
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: str = "INFO", log_format: str = "text") -> None:
    """Lines on stderr, once per process: human-readable ("text") or JSON ("json")."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    # Neither format shows the caller's file and line, the thread or the process: logging
    # would otherwise walk the stack and call getpid() for every record.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger(LOGGER_NAME)
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
