"""Password hashing with argon2id through passlib: hash, verify, needs-rehash, dummy hash."""

from __future__ import annotations

import functools
import os
import secrets
import sys
import threading

from passlib.context import CryptContext

# The one place the cost is set. OWASP's minimum for argon2id (Password Storage Cheat Sheet):
# m=19456 KiB (19 MiB), t=2, p=1. Raising any of these makes needs_rehash() true for older
# hashes, and the authenticator upgrades them at the next successful login.
ARGON2_MEMORY_COST_KIB = 19456
ARGON2_TIME_COST = 2
ARGON2_PARALLELISM = 1

# Niceness added to the verification threads (Linux keeps one per thread): a storm of logins
# gets the CPU the event loops leave, instead of an equal share that stalls every tunnel.
VERIFY_THREAD_NICENESS = 10

# Length in bytes of generated passwords: 18 bytes are 24 url-safe characters, 144 bits.
GENERATED_PASSWORD_BYTES = 18

_CONTEXT = CryptContext(
    schemes=["argon2"],
    argon2__type="ID",
    argon2__memory_cost=ARGON2_MEMORY_COST_KIB,
    argon2__time_cost=ARGON2_TIME_COST,
    argon2__parallelism=ARGON2_PARALLELISM,
)


def hash_password(password: str) -> str:
    """An argon2id hash of ``password`` with the current parameters. CPU-bound: run off the loop."""
    hashed: str = _CONTEXT.hash(password)
    return hashed


def lower_thread_priority() -> None:
    """Run in each verification thread as it starts (the executor's initializer).

    Every verification, of a right password, a wrong one or the dummy hash of an unknown
    user, runs in these threads at this one priority: a rejection still takes as long as an
    acceptance. What changes is who waits when the CPU is short: logins, not open tunnels.
    """
    if sys.platform == "linux":
        # Linux keeps a nice value per thread: PRIO_PROCESS with a thread id sets just that
        # thread's. Raising one's own niceness needs no privilege; 19 is the lowest priority.
        thread = threading.get_native_id()
        niceness = os.getpriority(os.PRIO_PROCESS, thread) + VERIFY_THREAD_NICENESS
        os.setpriority(os.PRIO_PROCESS, thread, min(niceness, 19))


def verify_password(password: str, password_hash: str) -> bool:
    """Whether ``password`` matches ``password_hash``; False, never an error, for a bad hash."""
    try:
        return bool(_CONTEXT.verify(password, password_hash))
    except (ValueError, TypeError):
        # passlib raises ValueError subclasses for unknown, malformed and oversized input;
        # any of them means "does not match".
        return False


def needs_rehash(password_hash: str) -> bool:
    """Whether ``password_hash`` was made with other parameters (or is not ours at all)."""
    try:
        return bool(_CONTEXT.needs_update(password_hash))
    except (ValueError, TypeError):
        return True


@functools.cache
def dummy_hash() -> str:
    """A hash of a random password, made once, with the current parameters.

    Verifying against it costs what a real verification costs, so a client cannot tell an
    unknown user from a wrong password by the time the answer takes.
    """
    return hash_password(secrets.token_urlsafe(GENERATED_PASSWORD_BYTES))


def generate_password() -> str:
    """A random password of 24 url-safe characters (144 bits), for ``user add --generate``."""
    return secrets.token_urlsafe(GENERATED_PASSWORD_BYTES)
