"""RFC 1928 and RFC 1929 numbers, named as the RFCs name them."""

from __future__ import annotations

from enum import IntEnum

SOCKS_VERSION = 0x05
# RFC 1929 §2: "The VER field contains the current version of the subnegotiation, which is X'01'."
USERNAME_PASSWORD_VERSION = 0x01


class AuthMethod(IntEnum):
    """RFC 1928 §3 METHOD values."""

    NO_AUTHENTICATION_REQUIRED = 0x00
    GSSAPI = 0x01
    USERNAME_PASSWORD = 0x02
    NO_ACCEPTABLE_METHODS = 0xFF


class Command(IntEnum):
    """RFC 1928 §4 CMD values."""

    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class AddressType(IntEnum):
    """RFC 1928 §4 ATYP values."""

    IPV4 = 0x01
    DOMAINNAME = 0x03
    IPV6 = 0x04


class Reply(IntEnum):
    """RFC 1928 §6 REP values."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    CONNECTION_NOT_ALLOWED = 0x02
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class AuthStatus(IntEnum):
    """RFC 1929 §2 STATUS: X'00' is success; any other value is failure and MUST close."""

    SUCCESS = 0x00
    FAILURE = 0x01
