"""HTTP/1.1 proxy requests without I/O: heads parsed by h11, targets and Basic credentials.

A client of an HTTP proxy sends either ``CONNECT host:port`` (RFC 9110 §9.3.6), after whose
2xx response the connection is a tunnel, or a request in absolute form (``GET http://host/
HTTP/1.1``, RFC 9112 §3.2.2) that the proxy forwards to the origin. h11 does the HTTP/1.1
framing (and hands back the bytes after a CONNECT head); this module adds what a proxy needs
on top: the target as an Address, the ``Proxy-Authorization: Basic`` credentials (RFC 7617),
the hop-by-hop headers to drop (RFC 9110 §7.6.1), and the status for each SOCKS reply.

Driven like ServerConnection: ``receive_data()``, then ``next_event()`` until NEED_DATA.
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

import h11

from socksauth.protocol.address import Address
from socksauth.protocol.codes import Reply
from socksauth.protocol.connection import NEED_DATA, PAUSED, _Sentinel
from socksauth.protocol.errors import RemoteProtocolError
from socksauth.protocol.events import ConnectionClosed, Credentials

# A request head (request line and header fields) longer than this gets 431 and a close:
# browsers send 1-4 KiB; a proxy that buffers heads without bound is a memory exhaustion.
MAX_HEAD_BYTES: Final = 16 * 1024
# RFC 9110 §11.7.1: the 407 response "MUST send a Proxy-Authenticate header field".
REALM: Final = "socksauth"
PROXY_AUTHENTICATE: Final = f'Basic realm="{REALM}"'.encode()

Header = tuple[bytes, bytes]


class RequestForm(enum.Enum):
    """RFC 9112 §3.2: the request-target forms a proxy is asked to act on."""

    AUTHORITY = "authority"  # CONNECT host:port
    ABSOLUTE = "absolute"  # GET http://host:port/path


@dataclass(frozen=True, slots=True, kw_only=True)
class ProxyRequest:
    """One request head addressed to the proxy. ``path`` is the origin-form target to
    forward (b"" for CONNECT); ``headers`` are as received, names lower-cased by h11."""

    method: bytes
    form: RequestForm
    target: Address
    path: bytes
    headers: tuple[Header, ...]
    http_version: bytes
    credentials: Credentials | None

    def __repr__(self) -> str:  # the headers hold the password: never shown
        return f"ProxyRequest({self.method!r} {self.target} {self.form.value})"


# Why each status, for the SOCKS reply a failed request would have had (server/outbound.py
# maps errno to the reply; the same mapping then holds on both protocols).
_STATUS_BY_REPLY: Final = {
    Reply.SUCCEEDED: 200,
    Reply.CONNECTION_NOT_ALLOWED: 403,  # the destination policy or the user's limit
    Reply.TTL_EXPIRED: 504,  # the connect timed out
    Reply.HOST_UNREACHABLE: 502,  # includes names that do not resolve
    Reply.NETWORK_UNREACHABLE: 502,
    Reply.CONNECTION_REFUSED: 502,
    Reply.GENERAL_FAILURE: 502,
    Reply.ADDRESS_TYPE_NOT_SUPPORTED: 400,
    Reply.COMMAND_NOT_SUPPORTED: 501,
}

_REASONS: Final = {
    200: b"Connection established",
    400: b"Bad Request",
    403: b"Forbidden",
    407: b"Proxy Authentication Required",
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
    502: b"Bad Gateway",
    503: b"Service Unavailable",
    504: b"Gateway Timeout",
}

# RFC 9110 §7.6.1: hop-by-hop fields, which "a proxy or gateway MUST ... remove or replace"
# before forwarding, plus those named in Connection, plus the proxy's own credentials.
# Framing (Transfer-Encoding, Content-Length) is h11's on each side: see forwarded_headers.
_HOP_BY_HOP: Final = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",  # not standard, sent by old clients; never for the origin
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)


def status_for(reply: Reply) -> int:
    """The HTTP status of a CONNECT (or forwarded request) that got ``reply`` as SOCKS."""
    return _STATUS_BY_REPLY.get(reply, 502)


def error_response(status: int, *, challenge: bool = False) -> bytes:
    """A complete response with no body, after which the connection closes; with
    ``challenge`` the 407's Proxy-Authenticate (RFC 9110 §11.7.1)."""
    reason = _REASONS.get(status, b"Error")
    head = b"HTTP/1.1 %d %s\r\n" % (status, reason)
    if challenge:
        head += b"Proxy-Authenticate: " + PROXY_AUTHENTICATE + b"\r\n"
    return head + b"Content-Length: 0\r\nConnection: close\r\n\r\n"


def established_response() -> h11.Response:
    """The 2xx that turns a CONNECT into a tunnel (sent through ProxyConnection.send)."""
    return h11.Response(status_code=200, headers=[], reason=_REASONS[200])


def parse_credentials(headers: Iterable[Header]) -> Credentials | None:
    """``Proxy-Authorization: Basic base64(user-id ":" password)`` (RFC 7617 §2), or None
    when absent or another scheme. User-id and password are decoded as UTF-8 with
    surrogateescape, as RFC 1929 credentials are, so both protocols look up the same name.

    Raises:
        RemoteProtocolError: Basic with something that is not base64 of ``user:password``.
    """
    for name, value in headers:
        if name != b"proxy-authorization":
            continue
        scheme, _, token = value.strip().partition(b" ")
        if scheme.lower() != b"basic":
            return None
        try:
            decoded = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise RemoteProtocolError(
                "Proxy-Authorization: Basic credentials that are not base64",
                error_response(400),
            ) from None
        user, colon, password = decoded.partition(b":")
        if not colon:
            raise RemoteProtocolError(
                "Proxy-Authorization: Basic credentials without a colon", error_response(400)
            )
        return Credentials(
            user.decode("utf-8", "surrogateescape"), password.decode("utf-8", "surrogateescape")
        )
    return None


def parse_authority(authority: bytes, default_port: int | None = None) -> Address:
    """``host:port`` (RFC 9110 §4.2.3 authority, IPv6 literals in brackets) as an Address.

    Raises:
        ValueError: not a host and port (the caller answers 400).
    """
    text = authority.decode("ascii")  # h11 admitted only visible ASCII in the target
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket:
            raise ValueError("an IPv6 literal without its closing bracket")
        ipaddress.IPv6Address(host)
        port_text = rest[1:] if rest.startswith(":") else rest
        if rest and not rest.startswith(":"):
            raise ValueError("text after the IPv6 literal")
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon:
            host, port_text = text, ""
        if ":" in host:
            raise ValueError("an IPv6 literal must be in brackets")
    if not host or "@" in host:
        raise ValueError("no host")
    if port_text:
        if not port_text.isdigit() or len(port_text) > 5:
            raise ValueError("the port is not a number")
        port = int(port_text)
    elif default_port is not None:
        port = default_port
    else:
        raise ValueError("no port")
    if not 0 < port <= 0xFFFF:
        raise ValueError("the port is out of range")
    return Address.from_host(host.lower(), port)


def _proxy_request(event: h11.Request) -> ProxyRequest:
    """The h11 request as a ProxyRequest, or RemoteProtocolError with a 400."""
    headers = tuple((bytes(name), bytes(value)) for name, value in event.headers)
    target = bytes(event.target)
    try:
        if event.method == b"CONNECT":
            # RFC 9110 §9.3.6: "the request-target consists of only the host name and port
            # number of the tunnel destination, separated by a colon".
            address, path, form = parse_authority(target), b"", RequestForm.AUTHORITY
        else:
            url = urllib.parse.urlsplit(target)
            if url.scheme.lower() != b"http" or not url.netloc:
                # Origin form ("/path"), "*", or https:// (a client asks CONNECT for that).
                raise ValueError("not an http:// URL in absolute form")
            address = parse_authority(url.netloc.rpartition(b"@")[2], default_port=80)
            path = url.path or b"/"
            if url.query:
                path += b"?" + url.query
            form = RequestForm.ABSOLUTE
    except (ValueError, UnicodeError) as error:
        raise RemoteProtocolError(
            f"request target {target[:100]!r}: {error}", error_response(400)
        ) from None
    return ProxyRequest(
        method=bytes(event.method),
        form=form,
        target=address,
        path=path,
        headers=headers,
        http_version=bytes(event.http_version),
        credentials=parse_credentials(headers),
    )


def forwarded_headers(headers: Sequence[Header]) -> list[Header]:
    """``headers`` without the hop-by-hop fields and Proxy-Authorization (RFC 9110 §7.6.1:
    also each field the Connection header names). A chunked message keeps one
    ``Transfer-Encoding: chunked`` so that h11 frames the body it forwards the same way."""
    named = {
        token.strip().lower()
        for name, value in headers
        if name == b"connection"
        for token in value.split(b",")
    }
    chunked = any(
        name == b"transfer-encoding" and b"chunked" in value.lower() for name, value in headers
    )
    kept = [
        (name, value) for name, value in headers if name not in _HOP_BY_HOP and name not in named
    ]
    if chunked:
        kept = [(name, value) for name, value in kept if name != b"content-length"]
        kept.append((b"transfer-encoding", b"chunked"))
    return kept


Event = ProxyRequest | h11.Data | h11.EndOfMessage | ConnectionClosed


class ProxyConnection:
    """The proxy's side of one HTTP/1.1 client connection: request heads in, responses out.

    A head longer than ``max_head_bytes`` raises RemoteProtocolError with a 431 response as
    its ``reply_hint``; any other malformed request, with a 400.
    """

    __slots__ = ("_h11",)

    def __init__(self, max_head_bytes: int = MAX_HEAD_BYTES) -> None:
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=max_head_bytes)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes from the client; b"" at end of stream."""
        self._h11.receive_data(bytes(data))

    def next_event(self) -> Event | _Sentinel:
        """The next request head, body chunk or end of a request; NEED_DATA or PAUSED
        (after a CONNECT, or while the response to a request is still to be sent).

        Raises:
            RemoteProtocolError: the client broke HTTP/1.1 (reply_hint: 400 or 431).
        """
        try:
            event = self._h11.next_event()
        except h11.RemoteProtocolError as error:
            raise RemoteProtocolError(
                f"HTTP: {error}", error_response(error.error_status_hint)
            ) from None
        if event is h11.NEED_DATA:
            return NEED_DATA
        if event is h11.PAUSED:
            return PAUSED
        if isinstance(event, h11.Request):
            return _proxy_request(event)
        if isinstance(event, h11.ConnectionClosed):
            return ConnectionClosed()
        assert isinstance(event, (h11.Data, h11.EndOfMessage))
        return event

    def send(
        self, event: h11.Response | h11.InformationalResponse | h11.Data | h11.EndOfMessage
    ) -> bytes:
        """The bytes of ``event`` for the client, framed as h11 decides."""
        data = self._h11.send(event)
        assert data is not None
        return data

    @property
    def keep_alive(self) -> bool:
        """Whether the connection may carry another request after this one."""
        return self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE

    def start_next_cycle(self) -> None:
        """Both sides are done with a request: read the next one."""
        self._h11.start_next_cycle()

    @property
    def trailing_data(self) -> tuple[bytes, bool]:
        """After a CONNECT: (the bytes the client sent after its head, whether it closed)."""
        data, closed = self._h11.trailing_data
        return bytes(data), closed
