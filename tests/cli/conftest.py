"""Fixtures: the database fixtures of tests/conftest.py, a running proxy, and loopback targets."""

from __future__ import annotations

from e2e import echo_server, http_server, proxy, start_proxy, user_store

__all__ = ["echo_server", "http_server", "proxy", "start_proxy", "user_store"]
