"""The SOCKS5 messages as events, their wire formats, and a parser for each.

Every message has ``encode()`` and a ``parse_*`` function that reads it incrementally from a
ReceiveBuffer: while the message is incomplete it rolls the buffer back and returns None, so
the same event results whether the bytes arrive one at a time or several messages in one
segment.
The server parses what clients send; the client-side parsers exist for round-trip tests,
the benchmark and test clients.
"""

from __future__ import annotations

from dataclasses import dataclass

from socksauth.protocol.address import Address, take_address
from socksauth.protocol.buffer import ReceiveBuffer
from socksauth.protocol.codes import (
    SOCKS_VERSION,
    USERNAME_PASSWORD_VERSION,
    AddressType,
    AuthMethod,
    AuthStatus,
    Command,
    Reply,
)
from socksauth.protocol.errors import RemoteProtocolError

_NO_ACCEPTABLE = bytes((SOCKS_VERSION, AuthMethod.NO_ACCEPTABLE_METHODS))
_AUTH_FAILURE = bytes((USERNAME_PASSWORD_VERSION, AuthStatus.FAILURE))
_COMMANDS = frozenset(int(c) for c in Command)
_REPLIES = frozenset(int(r) for r in Reply)
_METHODS = frozenset(int(m) for m in AuthMethod)


def _failure_reply(reply: Reply) -> bytes:
    return CommandReply(reply, Address.unspecified()).encode()


# --- client → server --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Greeting:
    """RFC 1928 §3 version identifier/method selection message.

    +----+----------+----------+
    |VER | NMETHODS | METHODS  |
    +----+----------+----------+
    | 1  |    1     | 1 to 255 |
    +----+----------+----------+
    """

    methods: tuple[int, ...]

    def encode(self) -> bytes:
        return bytes((SOCKS_VERSION, len(self.methods), *self.methods))


def parse_greeting(buffer: ReceiveBuffer) -> Greeting | None:
    head = buffer.take(2)
    if head is None:
        buffer.rollback()
        return None
    version, count = head
    if version != SOCKS_VERSION:
        # Not SOCKS5 (SOCKS4's first byte is 4, HTTP's is a letter): no SOCKS5 reply
        # would mean anything to such a peer, so the answer is a clean close.
        raise RemoteProtocolError(f"version {version:#04x} is not SOCKS5")
    if count == 0:
        raise RemoteProtocolError("greeting offers no methods", _NO_ACCEPTABLE)
    methods = buffer.take(count)
    if methods is None:
        buffer.rollback()
        return None
    buffer.commit()
    return Greeting(tuple(methods))


@dataclass(frozen=True, slots=True, repr=False)
class Credentials:
    """RFC 1929 §2 username/password request.

    +----+------+----------+------+----------+
    |VER | ULEN |  UNAME   | PLEN |  PASSWD  |
    +----+------+----------+------+----------+
    | 1  |  1   | 1 to 255 |  1   | 1 to 255 |
    +----+------+----------+------+----------+

    Both fields are decoded as UTF-8, keeping undecodable bytes (surrogateescape) so they
    round-trip; such a name matches no account. The repr never shows the password.
    """

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<redacted>)"

    def encode(self) -> bytes:
        name = self.username.encode("utf-8", "surrogateescape")
        secret = self.password.encode("utf-8", "surrogateescape")
        if len(name) > 255 or len(secret) > 255:
            raise ValueError("RFC 1929 usernames and passwords are at most 255 bytes")
        return bytes((USERNAME_PASSWORD_VERSION, len(name))) + name + bytes((len(secret),)) + secret


def parse_credentials(buffer: ReceiveBuffer) -> Credentials | None:
    head = buffer.take(2)
    if head is None:
        buffer.rollback()
        return None
    version, name_length = head
    if version != USERNAME_PASSWORD_VERSION:
        raise RemoteProtocolError(
            f"username/password version {version:#04x} is not 0x01", _AUTH_FAILURE
        )
    name = buffer.take(name_length)
    if name is None:
        buffer.rollback()
        return None
    secret_length = buffer.take(1)
    if secret_length is None:
        buffer.rollback()
        return None
    secret = buffer.take(secret_length[0])
    if secret is None:
        buffer.rollback()
        return None
    buffer.commit()
    return Credentials(
        name.decode("utf-8", "surrogateescape"), secret.decode("utf-8", "surrogateescape")
    )


@dataclass(frozen=True, slots=True)
class CommandRequest:
    """RFC 1928 §4 request.

    +----+-----+-------+------+----------+----------+
    |VER | CMD |  RSV  | ATYP | DST.ADDR | DST.PORT |
    +----+-----+-------+------+----------+----------+
    | 1  |  1  | X'00' |  1   | Variable |    2     |
    +----+-----+-------+------+----------+----------+
    """

    command: Command
    address: Address

    def encode(self) -> bytes:
        return bytes((SOCKS_VERSION, self.command, 0)) + self.address.encode()


def parse_request(buffer: ReceiveBuffer) -> CommandRequest | None:
    head = buffer.take(3)
    if head is None:
        buffer.rollback()
        return None
    version, command, _reserved = head  # RSV is ignored, as RFC 1928 gives it no meaning
    if version != SOCKS_VERSION:
        raise RemoteProtocolError(
            f"request version {version:#04x} is not SOCKS5", _failure_reply(Reply.GENERAL_FAILURE)
        )
    address = take_address(buffer, _failure_reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED))
    if address is None:
        buffer.rollback()
        return None
    buffer.commit()
    if command not in _COMMANDS:
        raise RemoteProtocolError(
            f"unknown command {command:#04x}", _failure_reply(Reply.COMMAND_NOT_SUPPORTED)
        )
    return CommandRequest(Command(command), address)


# --- server → client --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MethodSelection:
    """RFC 1928 §3 METHOD selection message.

    +----+--------+
    |VER | METHOD |
    +----+--------+
    | 1  |   1    |
    +----+--------+
    """

    method: AuthMethod

    def encode(self) -> bytes:
        return bytes((SOCKS_VERSION, self.method))


def parse_method_selection(buffer: ReceiveBuffer) -> MethodSelection | None:
    raw = buffer.take(2)
    if raw is None:
        buffer.rollback()
        return None
    if raw[0] != SOCKS_VERSION:
        raise RemoteProtocolError(f"version {raw[0]:#04x} is not SOCKS5")
    if raw[1] not in _METHODS:
        raise RemoteProtocolError(f"unknown method {raw[1]:#04x}")
    buffer.commit()
    return MethodSelection(AuthMethod(raw[1]))


@dataclass(frozen=True, slots=True)
class AuthReply:
    """RFC 1929 §2 response.

    +----+--------+
    |VER | STATUS |
    +----+--------+
    | 1  |   1    |
    +----+--------+
    """

    status: AuthStatus

    def encode(self) -> bytes:
        return bytes((USERNAME_PASSWORD_VERSION, self.status))


def parse_auth_reply(buffer: ReceiveBuffer) -> AuthReply | None:
    raw = buffer.take(2)
    if raw is None:
        buffer.rollback()
        return None
    if raw[0] != USERNAME_PASSWORD_VERSION:
        raise RemoteProtocolError(f"username/password version {raw[0]:#04x} is not 0x01")
    buffer.commit()
    # RFC 1929: any non-zero STATUS is a failure.
    return AuthReply(AuthStatus.SUCCESS if raw[1] == 0 else AuthStatus.FAILURE)


@dataclass(frozen=True, slots=True)
class CommandReply:
    """RFC 1928 §6 reply.

    +----+-----+-------+------+----------+----------+
    |VER | REP |  RSV  | ATYP | BND.ADDR | BND.PORT |
    +----+-----+-------+------+----------+----------+
    | 1  |  1  | X'00' |  1   | Variable |    2     |
    +----+-----+-------+------+----------+----------+
    """

    reply: Reply
    address: Address

    def encode(self) -> bytes:
        return bytes((SOCKS_VERSION, self.reply, 0)) + self.address.encode()


def parse_reply(buffer: ReceiveBuffer) -> CommandReply | None:
    head = buffer.take(3)
    if head is None:
        buffer.rollback()
        return None
    if head[0] != SOCKS_VERSION:
        raise RemoteProtocolError(f"reply version {head[0]:#04x} is not SOCKS5")
    if head[1] not in _REPLIES:
        raise RemoteProtocolError(f"unknown reply code {head[1]:#04x}")
    address = take_address(buffer, None)
    if address is None:
        buffer.rollback()
        return None
    buffer.commit()
    return CommandReply(Reply(head[1]), address)


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The client closed its side (end of stream) at a message boundary."""


ClientEvent = Greeting | Credentials | CommandRequest | ConnectionClosed
ServerEvent = MethodSelection | AuthReply | CommandReply

__all__ = [
    "AddressType",
    "AuthReply",
    "ClientEvent",
    "CommandReply",
    "CommandRequest",
    "ConnectionClosed",
    "Credentials",
    "Greeting",
    "MethodSelection",
    "ServerEvent",
    "parse_auth_reply",
    "parse_credentials",
    "parse_greeting",
    "parse_method_selection",
    "parse_reply",
    "parse_request",
]
