"""Fixtures: loopback targets and a running proxy with the users alice and bob."""

from __future__ import annotations

from e2e import echo_server, http_server, proxy, start_proxy, user_store

__all__ = ["echo_server", "http_server", "proxy", "start_proxy", "user_store"]
