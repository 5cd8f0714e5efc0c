"""VerificationCache: hits only for the exact (user, hash, password), bounded, expiring."""

from __future__ import annotations

from socksauth.auth.cache import VerificationCache


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_cached_success_hits_for_the_same_triple_only() -> None:
    cache = VerificationCache()
    cache.add("alice", "$argon2id$h1", "pw")
    assert cache.contains("alice", "$argon2id$h1", "pw")
    assert not cache.contains("alice", "$argon2id$h1", "pw2")
    assert not cache.contains("bob", "$argon2id$h1", "pw")
    # A password change gives a new stored hash: the old success no longer counts.
    assert not cache.contains("alice", "$argon2id$h2", "pw")
    assert (cache.hits, cache.misses) == (1, 3)


def test_entries_expire_after_the_ttl() -> None:
    clock = FakeClock()
    cache = VerificationCache(ttl_seconds=60, clock=clock)
    cache.add("alice", "h", "pw")
    clock.now += 59
    assert cache.contains("alice", "h", "pw")
    clock.now += 2
    assert not cache.contains("alice", "h", "pw")
    assert len(cache) == 0


def test_the_least_recently_used_entry_is_dropped_beyond_the_bound() -> None:
    cache = VerificationCache(max_entries=2)
    cache.add("a", "h", "pw")
    cache.add("b", "h", "pw")
    assert cache.contains("a", "h", "pw")  # a is now the most recently used
    cache.add("c", "h", "pw")
    assert len(cache) == 2
    assert cache.contains("a", "h", "pw")
    assert not cache.contains("b", "h", "pw")
    assert cache.contains("c", "h", "pw")


def test_the_password_is_not_kept_in_the_cache() -> None:
    cache = VerificationCache()
    cache.add("alice", "h", "a-very-distinctive-password")
    keys = list(cache._entries)
    assert all(b"distinctive" not in key for key in keys)
    assert all(len(key) == 32 for key in keys)


def test_two_caches_key_differently() -> None:
    # The key is an HMAC with a per-process secret: a digest seen elsewhere is useless here.
    first, second = VerificationCache(), VerificationCache()
    first.add("alice", "h", "pw")
    second.add("alice", "h", "pw")
    assert list(first._entries) != list(second._entries)
