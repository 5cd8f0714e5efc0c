"""Which protocol a client speaks, from the first byte it sends (SOCKS5 or an HTTP proxy)."""

from __future__ import annotations

import enum
from typing import Final


class Kind(enum.Enum):
    """What a connection's first byte says it is."""

    SOCKS5 = "socks5"
    HTTP = "http"
    UNKNOWN = "unknown"  # neither: handed to the SOCKS5 core, which refuses it as today


# RFC 1928 §3: the greeting starts with VER = X'05'.
_SOCKS5_VERSION: Final = 0x05
# RFC 9112 §3: request-line = method SP request-target SP HTTP-version, and every registered
# method (GET, HEAD, POST, PUT, DELETE, CONNECT, OPTIONS, TRACE, PATCH) is upper-case letters.
# A method token could start with other tchars, but no client of a proxy sends one.
_HTTP_METHOD_START: Final = frozenset(range(ord("A"), ord("Z") + 1))


def detect(first_byte: int) -> Kind:
    """The protocol of a connection whose first byte is ``first_byte``.

    One byte decides, so no byte is held back or read twice: the bytes already read go, in
    order, to the one parser chosen.
    """
    if first_byte == _SOCKS5_VERSION:
        return Kind.SOCKS5
    if first_byte in _HTTP_METHOD_START:
        return Kind.HTTP
    return Kind.UNKNOWN
