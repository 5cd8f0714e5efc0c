"""Logging setup: one format for the whole process; secrets never reach a record."""

from __future__ import annotations

import logging
import sys

LOGGER_NAME = "socksauth"


def get_logger(component: str) -> logging.Logger:
    return logging.getLogger(f"{LOGGER_NAME}.{component}")


def configure(level: str = "INFO") -> None:
    """Human-readable lines on stderr, once per process."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger(LOGGER_NAME)
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
