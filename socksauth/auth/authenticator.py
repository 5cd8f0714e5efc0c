"""authenticate(username, password) → UserRecord | None, with verification off the event loop.

Unknown, disabled and expired users cost the same as a wrong password: the hash that is
verified is then a dummy one with the same parameters, and every failure gets the same answer.
Failures are throttled per (username, client address) pair (auth/throttle.py): delayed, then
locked out, each refusal answered as a wrong password; at most ``max_concurrent``
verifications run at once (argon2 takes 19 MiB each), the rest wait their address's turn
(auth/verifier.py).
"""

from __future__ import annotations

import asyncio
import enum
import functools
import ipaddress
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType

from socksauth.auth import passwords
from socksauth.auth.accounts import validate_username
from socksauth.auth.cache import VerificationCache
from socksauth.auth.throttle import Failure, LoginThrottle
from socksauth.auth.verifier import NotVerified, Verifier
from socksauth.config import in_networks
from socksauth.errors import DatabaseError, StoreUnavailable, UserError
from socksauth.health import Health, Tally, describe, stop_task
from socksauth.logs import get_logger
from socksauth.store.interfaces import UserLookup, UserRecord

log = get_logger("auth")

# How often last-login times are written: one UPDATE per interval for everyone who logged in,
# instead of a database round trip on every handshake.
LOGIN_FLUSH_INTERVAL_SECONDS = 1.0


class LoginRecorder:
    """Collects successful logins and writes last_login_at in batches, off the handshake path."""

    def __init__(
        self,
        users: UserLookup,
        interval_seconds: float = LOGIN_FLUSH_INTERVAL_SECONDS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._users = users
        self._interval = interval_seconds
        self._clock = clock
        self._pending: dict[str, datetime] = {}
        self._task: asyncio.Task[None] | None = None
        # A database outage costs two log lines, and retries back off (socksauth/health.py).
        self.health = Health("recording last-login times", log)

    def record(self, username: str) -> None:
        self._pending[username] = self._clock()

    async def flush(self) -> None:
        """Write the logins collected so far; on a database error they are kept for the next
        round (a newer login of the same user wins) and the error is raised."""
        if not self._pending:
            return
        batch, self._pending = self._pending, {}
        try:
            await self._users.record_logins(batch)
        except Exception:
            # One entry per user at most: what waits stays as small as the user table.
            for username, at in batch.items():
                if username not in self._pending:
                    self._pending[username] = at
            raise

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.flush()
            except Exception as error:
                await self.health.retry(error)
            else:
                self.health.succeeded()

    async def __aenter__(self) -> LoginRecorder:
        self._task = asyncio.create_task(self._run(), name="login-recorder")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await stop_task(self._task)
        try:
            await self.flush()
        except Exception as error:
            # A lost last-login time is not worth failing a shutdown for.
            log.warning(
                "could not record last login of %d user(s): %s", len(self._pending), describe(error)
            )


class LoginRefusal(enum.Enum):
    """Why a login was refused; the client is told the same for each (no oracle)."""

    AUTH_FAILED = "auth_failed"  # verified: wrong password, unknown or unusable account
    THROTTLED = "throttled"  # failed after a throttle delay, or too many delayed at once
    LOCKED_OUT = "locked_out"  # not verified: the pair is locked


@dataclass(frozen=True, slots=True)
class LoginResult:
    """A login's user (None: refused), why it was refused, and the delay it waited;
    ``wrong_network``: the password was right but the client is outside the user's client
    networks (refused as a wrong password all the same)."""

    user: UserRecord | None
    refusal: LoginRefusal | None = None
    delay_seconds: float = 0.0
    wrong_network: bool = False


class Authenticator:
    """Checks RFC 1929 credentials against the user store."""

    def __init__(
        self,
        users: UserLookup,
        executor: Executor,
        logins: LoginRecorder,
        cache: VerificationCache | None = None,
        throttle: LoginThrottle | None = None,
        max_concurrent: int = 1,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        """``max_concurrent``: verifications at once; as many as the executor has threads, so
        a waiting attempt that times out never reaches the executor's queue."""
        self._users = users
        self._executor = executor
        self._logins = logins
        self._cache = cache if cache is not None else VerificationCache()
        self._throttle = throttle if throttle is not None else LoginThrottle()
        self._verifier = Verifier(executor, max_concurrent, self._throttle.admit)
        self._clock = clock
        self._dummy_hash: str | None = None
        # Logins refused because the account could not be looked up: a line a minute.
        self.refused = Tally(
            "%d login(s) refused in the last %g s: the store is unavailable (%s)", log
        )

    async def start(self) -> None:
        """Compute the dummy hash once, before the first client can time a rejection."""
        loop = asyncio.get_running_loop()
        self._dummy_hash = await loop.run_in_executor(self._executor, passwords.dummy_hash)

    def close(self) -> None:
        """Write the last summary of refused logins (at shutdown)."""
        self.refused.close()

    @property
    def throttle(self) -> LoginThrottle:
        return self._throttle

    async def authenticate(
        self, username: str, password: str, client_host: str = ""
    ) -> UserRecord | None:
        """The user if the password is right and the account enabled and not expired, else
        None (login() says why).

        Raises:
            StoreUnavailable: the account is not in memory and the store did not answer.
        """
        return (await self.login(username, password, client_host)).user

    async def login(self, username: str, password: str, client_host: str = "") -> LoginResult:
        """authenticate(), with the reason of a refusal: refused without verifying while the
        (username, ``client_host``) pair is locked out, or when the address already has as
        many delayed attempts waiting as it may. A right password from outside the user's
        client networks costs what a wrong one costs: the stored hash is verified (never the
        cache of recent logins, which would answer faster) and the failure is throttled.

        Raises:
            StoreUnavailable: the account is not in memory and the store did not answer.
        """
        if self._dummy_hash is None:
            await self.start()
        assert self._dummy_hash is not None
        throttle = self._throttle
        admission = throttle.admit(client_host, username)
        if admission.locked:
            return LoginResult(None, LoginRefusal.LOCKED_OUT)
        delay = admission.delay_seconds
        if delay:
            if not throttle.hold(client_host):
                return LoginResult(None, LoginRefusal.THROTTLED)
            throttle.observer.delayed(delay)
            try:
                await asyncio.sleep(delay)
            finally:
                throttle.release(client_host)
        # A name no account can have (NUL, other control characters, bytes that are not
        # UTF-8) is an unknown user without asking the database, which may refuse to even
        # compare it (PostgreSQL rejects NUL in text). Found by tests/server/test_fuzz.py.
        try:
            user = await self._users.get_user(username) if _could_be_account(username) else None
        except DatabaseError as error:
            # Not the client's fault: no throttle penalty; one summary line a minute.
            self.refused.add(str(error))
            raise StoreUnavailable(str(error)) from None
        usable = user is not None and user.enabled and not user.expired(self._clock())
        stored_hash = user.password_hash if user is not None and usable else self._dummy_hash
        allowed_here = (
            user is None or not user.client_networks or _from(client_host, user.client_networks)
        )
        if usable and allowed_here and self._cache.contains(username, stored_hash, password):
            assert user is not None
            throttle.succeeded(client_host, username)
            self._logins.record(user.username)
            return LoginResult(user, delay_seconds=delay)
        matches = await self._verifier.verify(
            password, stored_hash, client_host, username, delayed_seconds=delay
        )
        if matches is NotVerified.LOCKED:
            # Locked out by the failures verified while this attempt waited for its turn.
            return LoginResult(None, LoginRefusal.LOCKED_OUT, delay)
        if matches is NotVerified.DELAYED:
            throttle.observer.failed(Failure.QUEUED_BEHIND_FAILURES)
            return LoginResult(None, LoginRefusal.THROTTLED, delay)
        if not (matches and usable and user is not None and allowed_here):
            if user is None:
                reason = Failure.UNKNOWN_USER
            elif not usable:
                reason = Failure.UNUSABLE_ACCOUNT
            else:
                # A right password from outside the client networks too: counted, delayed
                # and answered as a wrong one (the audit alone says why).
                reason = Failure.WRONG_PASSWORD
            throttle.failed(client_host, username, password, reason)
            refusal = LoginRefusal.THROTTLED if delay else LoginRefusal.AUTH_FAILED
            wrong_network = matches and usable and not allowed_here
            return LoginResult(None, refusal, delay, wrong_network=wrong_network)
        throttle.succeeded(client_host, username)
        if passwords.needs_rehash(stored_hash):
            stored_hash = await self._rehash(user, password, asyncio.get_running_loop())
        self._cache.add(username, stored_hash, password)
        self._logins.record(user.username)
        return LoginResult(user, delay_seconds=delay)

    async def _rehash(
        self, user: UserRecord, password: str, loop: asyncio.AbstractEventLoop
    ) -> str:
        """Upgrade the stored hash; returns the hash now stored (the old one if that failed)."""
        # The parameters were raised since this hash was made: upgrade it now that we hold
        # the password, compare-and-set so a concurrent `user passwd` wins.
        new_hash = await loop.run_in_executor(self._executor, passwords.hash_password, password)
        try:
            await self._users.replace_password_hash(user.username, user.password_hash, new_hash)
        except Exception:
            log.exception("could not store the rehashed password of %r", user.username)
            return user.password_hash
        return new_hash


@functools.lru_cache(maxsize=1024)
def _networks(
    texts: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """A user's client networks, parsed once per distinct list; a CIDR that does not parse
    (only a hand-edited database has one) matches nothing."""
    networks = []
    for text in texts:
        try:
            networks.append(ipaddress.ip_network(text, strict=False))
        except ValueError:
            log.error("client network %r of a user is not a network; ignored", text)
    return tuple(networks)


def _from(client_host: str, texts: tuple[str, ...]) -> bool:
    """Whether ``client_host`` (the client behind any PROXY header) is in one of ``texts``."""
    return in_networks(client_host, _networks(texts))


def _could_be_account(username: str) -> bool:
    try:
        validate_username(username)
    except UserError:
        return False
    return True
