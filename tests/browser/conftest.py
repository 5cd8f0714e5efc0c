"""Fixtures: the database fixtures of tests/conftest.py, users alice and bob, a loopback echo."""

from __future__ import annotations

from e2e import echo_server, user_store

__all__ = ["echo_server", "user_store"]
