"""Errors of the sans-IO SOCKS5 core (h11's local/remote split)."""

from __future__ import annotations

from socksauth.errors import SocksAuthError


class ProtocolError(SocksAuthError):
    """The SOCKS5 exchange cannot continue."""


class LocalProtocolError(ProtocolError):
    """We (the server side) tried something the protocol does not allow: a bug in the caller."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow.

    ``reply_hint`` is the exact bytes to write before closing (an RFC reply that tells the
    client what went wrong), or None when the right answer is a silent close, e.g. when the
    peer does not speak SOCKS5 at all.
    """

    def __init__(self, message: str, reply_hint: bytes | None = None) -> None:
        super().__init__(message)
        self.reply_hint = reply_hint
