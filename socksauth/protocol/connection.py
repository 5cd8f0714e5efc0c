"""ServerConnection: the server side of one SOCKS5 handshake as a state machine, without I/O.

Driven one way (h11's pattern): ``receive_data(bytes)`` with what arrived (b"" at end of
stream), then ``next_event()`` until it returns NEED_DATA or PAUSED; act on each event and
write the bytes ``send(event)`` returns. After a successful CONNECT reply the handshake is
over and ``trailing_data`` holds whatever the client pipelined after its request, which
belongs to the tunnel.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Final

from socksauth.protocol.buffer import ReceiveBuffer
from socksauth.protocol.codes import AuthMethod, AuthStatus, Command, Reply
from socksauth.protocol.errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from socksauth.protocol.events import (
    AuthReply,
    ClientEvent,
    CommandReply,
    CommandRequest,
    ConnectionClosed,
    Credentials,
    Greeting,
    MethodSelection,
    ServerEvent,
    parse_credentials,
    parse_greeting,
    parse_request,
)


class _Sentinel(enum.Enum):
    NEED_DATA = "NEED_DATA"
    PAUSED = "PAUSED"


NEED_DATA: Final = _Sentinel.NEED_DATA
"""More bytes from the client are needed before the next event."""
PAUSED: Final = _Sentinel.PAUSED
"""The client is waiting for us: send the next server message first."""

# The longest handshake a client can pipeline before our first answer is a greeting (257),
# credentials (513) and a request (262); a little slack covers application bytes sent early.
DEFAULT_MAX_HANDSHAKE_BYTES: Final = 64 * 1024


class State(enum.Enum):
    AWAIT_GREETING = "await greeting"
    SEND_METHOD = "send method selection"
    AWAIT_CREDENTIALS = "await credentials"
    SEND_AUTH_REPLY = "send auth reply"
    AWAIT_REQUEST = "await request"
    SEND_REPLY = "send reply"
    SEND_SECOND_REPLY = "send second BIND reply"
    ESTABLISHED = "established"
    CLOSED = "closed"
    ERROR = "error"


# Every legal move, in one place. Keys are (state, transition name); the name of an event is
# computed by _transition_name below, so that e.g. a method selection of 0x02 and of 0xFF lead
# to different states.
_TRANSITIONS: Final[dict[tuple[State, str], State]] = {
    (State.AWAIT_GREETING, "greeting"): State.SEND_METHOD,
    (State.AWAIT_GREETING, "closed"): State.CLOSED,
    (State.SEND_METHOD, "select username/password"): State.AWAIT_CREDENTIALS,
    (State.SEND_METHOD, "select no authentication"): State.AWAIT_REQUEST,
    (State.SEND_METHOD, "select none acceptable"): State.CLOSED,
    (State.AWAIT_CREDENTIALS, "credentials"): State.SEND_AUTH_REPLY,
    (State.AWAIT_CREDENTIALS, "closed"): State.CLOSED,
    (State.SEND_AUTH_REPLY, "auth success"): State.AWAIT_REQUEST,
    (State.SEND_AUTH_REPLY, "auth failure"): State.CLOSED,
    (State.AWAIT_REQUEST, "request"): State.SEND_REPLY,
    (State.AWAIT_REQUEST, "closed"): State.CLOSED,
    (State.SEND_REPLY, "reply success"): State.ESTABLISHED,
    (State.SEND_REPLY, "first BIND reply"): State.SEND_SECOND_REPLY,
    (State.SEND_REPLY, "reply failure"): State.CLOSED,
    (State.SEND_SECOND_REPLY, "reply success"): State.ESTABLISHED,
    (State.SEND_SECOND_REPLY, "reply failure"): State.CLOSED,
}

_RECEIVING: Final[dict[State, Callable[[ReceiveBuffer], ClientEvent | None]]] = {
    State.AWAIT_GREETING: parse_greeting,
    State.AWAIT_CREDENTIALS: parse_credentials,
    State.AWAIT_REQUEST: parse_request,
}

# Methods the server may select (RFC 1928 §3); GSSAPI (0x01) is never selected: "compliant
# implementations MUST support GSSAPI" is not a requirement we can meet without Kerberos, so
# a client offering it is answered with another method it offered, or 0xFF.
_SELECTABLE: Final = frozenset(
    {
        AuthMethod.NO_AUTHENTICATION_REQUIRED,
        AuthMethod.USERNAME_PASSWORD,
        AuthMethod.NO_ACCEPTABLE_METHODS,
    }
)


class ServerConnection:
    """The handshake of one client, from greeting to the reply that opens or refuses a tunnel."""

    __slots__ = ("_buffer", "_end_of_stream", "_offered", "_request", "state")

    def __init__(self, max_handshake_bytes: int = DEFAULT_MAX_HANDSHAKE_BYTES) -> None:
        self.state = State.AWAIT_GREETING
        self._buffer = ReceiveBuffer(max_handshake_bytes)
        self._end_of_stream = False
        self._offered: tuple[int, ...] = ()
        self._request: CommandRequest | None = None

    # --- input ----------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Add bytes from the client; b"" means the client closed its side."""
        if self._end_of_stream and data:
            raise LocalProtocolError("data received after end of stream")
        if not data:
            self._end_of_stream = True
            return
        try:
            self._buffer.feed(data)
        except ProtocolError:
            self.state = State.ERROR
            raise

    def next_event(self) -> ClientEvent | _Sentinel:
        """The next client message, NEED_DATA, or PAUSED when it is our turn to send."""
        parse = _RECEIVING.get(self.state)
        if parse is None:
            if self.state in (State.ERROR, State.CLOSED, State.ESTABLISHED):
                raise LocalProtocolError(f"no events to read in state {self.state.value}")
            return PAUSED
        try:
            event = parse(self._buffer)
        except RemoteProtocolError:
            self.state = State.ERROR
            raise
        if event is None:
            if not self._end_of_stream:
                return NEED_DATA
            if len(self._buffer):
                error = RemoteProtocolError(f"connection closed mid-message in {self.state.value}")
                self.state = State.ERROR
                raise error
            event = ConnectionClosed()
        if isinstance(event, Greeting):
            self._offered = event.methods
        elif isinstance(event, CommandRequest):
            self._request = event
        self._move(event)
        return event

    # --- output ---------------------------------------------------------------------------

    def send(self, event: ServerEvent) -> bytes:
        """The wire bytes of ``event``, after checking it is legal now.

        An illegal event raises LocalProtocolError and leaves the connection in ERROR: what
        the client has been told is no longer known, so nothing more may be sent or read.
        """
        try:
            self._check_server_event(event)
            self._move(event)
        except LocalProtocolError:
            self.state = State.ERROR
            raise
        return event.encode()

    def _check_server_event(self, event: ServerEvent) -> None:
        # A client event here would drive the client half of the table (a Greeting "sent" in
        # AWAIT_GREETING moved to SEND_METHOD; ConnectionClosed moved to CLOSED, then failed
        # to encode), so only server messages get as far as the transition table.
        if not isinstance(event, MethodSelection | AuthReply | CommandReply):
            raise LocalProtocolError(f"{type(event).__name__} is not a server message")
        if isinstance(event, MethodSelection):
            if event.method not in _SELECTABLE:
                raise LocalProtocolError(f"method {event.method.name} cannot be selected")
            # RFC 1928 §3: "The server selects from one of the methods given in METHODS";
            # X'FF' is the one answer that needs no offer.
            if (
                event.method is not AuthMethod.NO_ACCEPTABLE_METHODS
                and event.method not in self._offered
            ):
                raise LocalProtocolError(f"method {event.method.name} was not offered")

    @property
    def request(self) -> CommandRequest | None:
        """The client's request, once received."""
        return self._request

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """Bytes received after the request, and whether the client already closed its side.

        Only meaningful once ESTABLISHED; the buffer is emptied, so call it once.
        """
        if self.state is not State.ESTABLISHED:
            raise LocalProtocolError(f"no tunnel yet in state {self.state.value}")
        return self._buffer.take_all(), self._end_of_stream

    # --- the one transition function ------------------------------------------------------

    def _move(self, event: ClientEvent | ServerEvent) -> None:
        name = self._transition_name(event)
        try:
            self.state = _TRANSITIONS[(self.state, name)]
        except KeyError:
            raise LocalProtocolError(f"{name} is not allowed in state {self.state.value}") from None

    def _transition_name(self, event: ClientEvent | ServerEvent) -> str:
        if isinstance(event, Greeting):
            return "greeting"
        if isinstance(event, Credentials):
            return "credentials"
        if isinstance(event, CommandRequest):
            return "request"
        if isinstance(event, ConnectionClosed):
            return "closed"
        if isinstance(event, MethodSelection):
            return {
                AuthMethod.USERNAME_PASSWORD: "select username/password",
                AuthMethod.NO_AUTHENTICATION_REQUIRED: "select no authentication",
            }.get(event.method, "select none acceptable")
        if isinstance(event, AuthReply):
            return "auth success" if event.status is AuthStatus.SUCCESS else "auth failure"
        # CommandReply. RFC 1928 §6: BIND gets two replies, the first when the server listens,
        # the second when the expected host connects.
        if event.reply is not Reply.SUCCEEDED:
            return "reply failure"
        if (
            self.state is State.SEND_REPLY
            and self._request is not None
            and self._request.command is Command.BIND
        ):
            return "first BIND reply"
        return "reply success"


def select_method(offered: tuple[int, ...], allow_no_auth: bool) -> AuthMethod:
    """RFC 1928 §3: the server selects one of the methods the client offered, or X'FF'.

    Username/password is preferred whenever offered; "no authentication" only for a client
    in a network the admin trusts.
    """
    if AuthMethod.USERNAME_PASSWORD in offered:
        return AuthMethod.USERNAME_PASSWORD
    if allow_no_auth and AuthMethod.NO_AUTHENTICATION_REQUIRED in offered:
        return AuthMethod.NO_AUTHENTICATION_REQUIRED
    return AuthMethod.NO_ACCEPTABLE_METHODS
