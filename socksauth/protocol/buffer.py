"""A receive buffer for incremental parsing: take exactly n bytes, then commit or roll back."""

from __future__ import annotations

from socksauth.protocol.errors import RemoteProtocolError


class ReceiveBuffer:
    """Bytes received but not yet consumed, with a tentative read cursor.

    A parser takes what it needs with ``take``; if the message is incomplete it calls
    ``rollback`` and waits for more data, so a message split across any number of segments
    parses to the same event as one delivered whole.
    """

    __slots__ = ("_cursor", "_data", "_max_bytes")

    def __init__(self, max_bytes: int) -> None:
        self._data = bytearray()
        self._cursor = 0
        self._max_bytes = max_bytes

    def __len__(self) -> int:
        return len(self._data)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        self._data += data
        if len(self._data) > self._max_bytes:
            # Handshake messages are at most a few hundred bytes; a peer that sends more
            # before we answer is not a SOCKS5 client, and must not make us buffer forever.
            raise RemoteProtocolError(
                f"more than {self._max_bytes} bytes received before the handshake finished"
            )

    def take(self, n: int) -> bytes | None:
        """The next n bytes after the cursor, or None if fewer are buffered."""
        end = self._cursor + n
        if end > len(self._data):
            return None
        chunk = bytes(self._data[self._cursor : end])
        self._cursor = end
        return chunk

    def commit(self) -> None:
        """Drop everything taken since the last commit: the message is complete."""
        del self._data[: self._cursor]
        self._cursor = 0

    def rollback(self) -> None:
        """Forget the takes since the last commit: the message is incomplete."""
        self._cursor = 0

    def take_all(self) -> bytes:
        """Everything buffered, emptying the buffer."""
        data = bytes(self._data)
        self._data.clear()
        self._cursor = 0
        return data
