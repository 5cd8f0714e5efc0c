"""argon2id hashing: parameters, verification, malformed hashes, rehash, the dummy hash."""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from passlib.hash import argon2

from socksauth.auth import passwords


def test_hashes_are_argon2id_with_the_owasp_minimum_parameters() -> None:
    hashed = passwords.hash_password("correct horse")
    assert hashed.startswith("$argon2id$v=19$m=19456,t=2,p=1$")


def test_the_parameters_are_at_least_owasps_minimum() -> None:
    assert passwords.ARGON2_MEMORY_COST_KIB >= 19456
    assert passwords.ARGON2_TIME_COST >= 2
    assert passwords.ARGON2_PARALLELISM >= 1


def test_the_same_password_hashes_differently_each_time() -> None:
    assert passwords.hash_password("pw") != passwords.hash_password("pw")


def test_verify_accepts_the_right_password_only() -> None:
    hashed = passwords.hash_password("correct horse")
    assert passwords.verify_password("correct horse", hashed)
    assert not passwords.verify_password("correct horsE", hashed)
    assert not passwords.verify_password("", hashed)


def test_verify_handles_unicode_passwords() -> None:
    hashed = passwords.hash_password("pässwörd-密码")
    assert passwords.verify_password("pässwörd-密码", hashed)


@pytest.mark.parametrize(
    "malformed",
    [
        "",
        "not a hash",
        "$argon2id$v=19$m=19456",
        "$argon2id$v=19$m=19456,t=2,p=1$!!!$!!!",
        "$2b$12$abcdefghijklmnopqrstuv",
        "$argon2id$v=19$m=19456,t=2,p=1$" + "A" * 500,
    ],
)
def test_verify_is_false_not_an_error_for_a_malformed_hash(malformed: str) -> None:
    assert passwords.verify_password("pw", malformed) is False


def test_verify_is_false_for_an_absurdly_long_password() -> None:
    hashed = passwords.hash_password("pw")
    assert passwords.verify_password("x" * 100_000, hashed) is False


def test_a_fresh_hash_needs_no_rehash() -> None:
    assert not passwords.needs_rehash(passwords.hash_password("pw"))


def test_a_hash_with_lower_parameters_needs_rehash() -> None:
    weaker = argon2.using(type="ID", memory_cost=8192, time_cost=1, parallelism=1).hash("pw")
    assert passwords.verify_password("pw", weaker)
    assert passwords.needs_rehash(weaker)


def test_an_argon2i_hash_needs_rehash() -> None:
    other_type = argon2.using(
        type="I",
        memory_cost=passwords.ARGON2_MEMORY_COST_KIB,
        time_cost=passwords.ARGON2_TIME_COST,
        parallelism=passwords.ARGON2_PARALLELISM,
    ).hash("pw")
    assert passwords.needs_rehash(other_type)


def test_a_malformed_hash_needs_rehash_rather_than_raising() -> None:
    assert passwords.needs_rehash("not a hash")


def test_the_dummy_hash_is_computed_once_with_the_current_parameters() -> None:
    assert passwords.dummy_hash() is passwords.dummy_hash()
    assert passwords.dummy_hash().startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    assert not passwords.needs_rehash(passwords.dummy_hash())


def _median_seconds(password_hash: str) -> float:
    durations = []
    for _ in range(5):
        start = time.perf_counter()
        passwords.verify_password("a wrong password", password_hash)
        durations.append(time.perf_counter() - start)
    return statistics.median(durations)


def test_verifying_against_the_dummy_hash_costs_about_what_a_real_one_costs() -> None:
    real = passwords.hash_password("the user's password")
    dummy = passwords.dummy_hash()
    real_seconds, dummy_seconds = _median_seconds(real), _median_seconds(dummy)
    # Loose on purpose: the point is "same order of work", not a timing benchmark.
    assert real_seconds / 3 < dummy_seconds < real_seconds * 3


def test_generated_passwords_are_24_url_safe_characters_and_differ() -> None:
    generated = {passwords.generate_password() for _ in range(20)}
    assert len(generated) == 20
    for password in generated:
        assert len(password) == 24
        assert all(c.isascii() and (c.isalnum() or c in "-_") for c in password)


def _own_niceness() -> int:
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
def test_verification_threads_run_at_a_lower_priority_than_the_event_loop() -> None:
    loop_niceness = _own_niceness()
    with ThreadPoolExecutor(max_workers=1, initializer=passwords.lower_thread_priority) as pool:
        verify_niceness = pool.submit(_own_niceness).result(timeout=10)
        # The verification still works at that priority.
        hashed = passwords.hash_password("pw")
        assert pool.submit(passwords.verify_password, "pw", hashed).result(timeout=10)
    assert verify_niceness == min(loop_niceness + passwords.VERIFY_THREAD_NICENESS, 19)
    assert verify_niceness > loop_niceness or loop_niceness == 19
    # Only the verification thread: the thread that runs the loop keeps its priority.
    assert _own_niceness() == loop_niceness
