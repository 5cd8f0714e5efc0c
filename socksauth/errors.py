"""The root of socksauth's exceptions and the errors that cross layers."""

from __future__ import annotations


class SocksAuthError(Exception):
    """Every error socksauth raises on purpose derives from this."""


class ConfigError(SocksAuthError, ValueError):
    """A setting is invalid; the message names the setting."""


class SchemaOutOfDate(SocksAuthError, RuntimeError):
    """The database schema is not at the revision this code needs."""


class UserError(SocksAuthError, ValueError):
    """An account operation was refused (unknown user, duplicate name, bad name)."""


class DatabaseError(SocksAuthError, RuntimeError):
    """The database could not be reached or refused an operation; the message has no secrets."""


class StoreUnavailable(DatabaseError):
    """A client's handshake needed the store (a login not in memory) and it did not answer:
    the client is refused with the RFC 1929 failure status, audited ``store_unavailable``."""
