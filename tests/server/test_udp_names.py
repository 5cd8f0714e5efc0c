"""The UDP relay's small pieces without sockets: the name cache and address normalisation."""

from __future__ import annotations

import pytest

from socksauth.server.udp import NameCache, normalise_host


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_cached_name_expires_after_its_ttl() -> None:
    clock = FakeClock()
    cache = NameCache(ttl_seconds=30, max_names=8, clock=clock)
    cache.put("Example.COM", "192.0.2.1")
    assert cache.get("example.com") == "192.0.2.1"  # names are case-insensitive
    clock.now += 29.9
    assert cache.get("EXAMPLE.com") == "192.0.2.1"
    clock.now += 0.1
    assert cache.get("example.com") is None


def test_the_cache_keeps_at_most_max_names_dropping_the_oldest() -> None:
    cache = NameCache(ttl_seconds=30, max_names=2, clock=FakeClock())
    cache.put("a.test", "192.0.2.1")
    cache.put("b.test", "192.0.2.2")
    cache.put("a.test", "192.0.2.3")  # refreshed: now the newest
    cache.put("c.test", "192.0.2.4")
    assert cache.get("b.test") is None
    assert (cache.get("a.test"), cache.get("c.test")) == ("192.0.2.3", "192.0.2.4")


@pytest.mark.parametrize(
    ("host", "normal"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("::FFFF:7f00:1", "127.0.0.1"),
        ("0:0:0:0:0:0:0:1", "::1"),
        ("fe80::1%lo", "fe80::1"),
        ("example.com", "example.com"),
    ],
)
def test_addresses_are_compared_in_one_form(host: str, normal: str) -> None:
    assert normalise_host(host) == normal
